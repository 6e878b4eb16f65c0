# SIGTERM under load: both daemons drain and exit 0; every 202 is in Kafka
# and, once a worker runs again, in PostgreSQL.

import http.client
import signal
import threading
import time

from harness import (Client, assert_accepted_in_kafka, ping_pong, run_threads,
                      wait_until)

THREADS = 4
MAX_PER_THREAD = 5000   # bound on the load whatever happens


def test_sigterm_under_load(pipeline, services):
    worker = pipeline.start_worker()
    ingest = pipeline.start_ingest()

    accepted = {}           # webhook id -> conversation id
    others = []             # (status, body) of non-202 answers
    lock = threading.Lock()
    stop = threading.Event()

    def send(t):
        client = Client(ingest.port, timeout=30)
        try:
            for n in range(MAX_PER_THREAD):
                if stop.is_set():
                    return
                cid = pipeline.cid(f"s{t}-{n}")
                wid, body = ping_pong(cid)
                try:
                    r = client.post(body, headers={"webhook-id": wid})
                except (OSError, http.client.HTTPException):
                    # Going down: a refused or closed connection.  Try a
                    # fresh one a few times, then stop.
                    time.sleep(0.01)
                    if not ingest.running():
                        return
                    continue
                with lock:
                    if r.status == 202 and (r.json or {}).get("id") != wid:
                        others.append((r.status, r.body[:200]))
                    elif r.status == 202:
                        accepted[wid] = cid
                    else:
                        others.append((r.status, r.body[:200]))
        finally:
            client.close()

    loader = threading.Thread(target=run_threads, args=(THREADS, send),
                              daemon=True)
    loader.start()
    try:
        wait_until(lambda: len(accepted) >= 300 and
                   pipeline.message_count() > 0, 60,
                   message="load to build up (300 accepted, rows landing)",
                   describe=lambda: f"{len(accepted)} accepted, others "
                   f"{others[:3]}")
        n_at_term = len(accepted)
        ingest.signal(signal.SIGTERM)
        worker.signal(signal.SIGTERM)
        rc_ingest = ingest.wait()
        rc_worker = worker.wait()
    finally:
        stop.set()
        loader.join(60)
    assert not loader.is_alive(), "senders still running"
    assert rc_ingest == 0, (f"sluice-ingest exited {rc_ingest} on SIGTERM; "
                            f"log tail:\n{ingest.log_tail()}")
    assert rc_worker == 0, (f"sluice-worker exited {rc_worker} on SIGTERM; "
                            f"log tail:\n{worker.log_tail()}")
    bad = [o for o in others if o[0] != 503]
    assert not bad, f"unexpected answers during shutdown: {bad[:5]}"
    assert len(accepted) >= n_at_term

    # Every 202 is durable in Kafka.
    in_kafka = assert_accepted_in_kafka(services, pipeline.topic, accepted)
    assert len(in_kafka) >= len(accepted)

    # ... and in PostgreSQL once a worker runs again.
    pipeline.restart(worker)
    want = set(accepted.values())

    def landed():
        rows = services.query(
            "SELECT conversation_id, count(*) FROM messages"
            " WHERE starts_with(conversation_id, %s) GROUP BY 1",
            (pipeline.prefix,))
        have = {c for c, n in rows if n == 2}
        return want <= have
    wait_until(landed, 120, 0.5,
               message=f"the {len(want)} accepted conversations to land",
               describe=lambda: f"{pipeline.message_count()} messages")
    pipeline.wait_caught_up()
    assert not pipeline.duplicates()
    # Records nobody got a 202 for (answer lost in the shutdown) may land
    # too; nothing else.
    assert pipeline.message_count() == 2 * len(in_kafka), (
        f"{pipeline.message_count()} messages for {len(in_kafka)} records")
