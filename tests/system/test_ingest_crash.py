# kill -9 of sluice-ingest under load, twice, each time started again on
# the same port: a 202 is only sent once Kafka has the record, so every
# 202 is in Kafka under its key and lands in PostgreSQL exactly once;
# requests cut off by the crash got no answer and may land or not.

import http.client
import random
import threading
import time

from harness import Client, assert_accepted_in_kafka, ping_pong, wait_until

THREADS = 4
KILLS = 2


def test_kill_9_under_load(pipeline, services):
    pipeline.start_worker()
    ingest = pipeline.start_ingest()
    accepted = {}           # webhook id -> conversation id
    others = []             # (status, body) of answers other than 202/503
    cut = [0]               # requests that got no answer
    lock = threading.Lock()
    stop = threading.Event()

    def send(t):
        client = Client(ingest.port, timeout=30)
        n = 0
        try:
            while not stop.is_set():
                cid = pipeline.cid(f"k{t}-{n}")
                n += 1
                wid, body = ping_pong(cid)
                try:
                    r = client.post(body, headers={"webhook-id": wid})
                except (OSError, http.client.HTTPException):
                    client.close()
                    with lock:
                        cut[0] += 1
                    time.sleep(0.05)         # the daemon is coming back
                    continue
                with lock:
                    if r.status == 202 and (r.json or {}).get("id") == wid:
                        accepted[wid] = cid
                    elif r.status != 503:
                        others.append((r.status, r.body[:200]))
        finally:
            client.close()

    threads = [threading.Thread(target=send, args=(t,), daemon=True)
               for t in range(THREADS)]
    for th in threads:
        th.start()
    rnd = random.Random()
    kills = []
    try:
        for k in range(KILLS):
            at = len(accepted) + 200
            wait_until(lambda: len(accepted) >= at, 60, 0.01,
                       f"200 more accepted before kill {k + 1}",
                       describe=lambda: f"{len(accepted)}; {others[:3]}")
            time.sleep(rnd.uniform(0, 0.3))
            ingest.kill9()
            kills.append(len(accepted))
            pipeline.restart(ingest)
        at = len(accepted) + 200
        wait_until(lambda: len(accepted) >= at, 60, 0.01,
                   "200 more accepted after the last restart")
    finally:
        stop.set()
        for th in threads:
            th.join(60)
    assert not any(th.is_alive() for th in threads), "senders stuck"
    assert not others, f"unexpected answers: {others[:5]}"
    print(f"\n{len(accepted)} accepted, {cut[0]} cut off, kills at {kills}")

    # Every 202 is durable in Kafka, under its conversation's key.
    in_kafka = assert_accepted_in_kafka(services, pipeline.topic, accepted)

    # ... and in PostgreSQL once each, with nothing but what is in Kafka.
    want = set(accepted.values())

    def landed():
        rows = services.query(
            "SELECT conversation_id FROM messages WHERE"
            " starts_with(conversation_id, %s) GROUP BY 1"
            " HAVING count(*) = 2", (pipeline.prefix,))
        return want <= {c for (c,) in rows}
    wait_until(landed, 120, 0.5,
               f"the {len(want)} accepted conversations to land",
               describe=lambda: f"{pipeline.message_count()} messages")
    pipeline.wait_caught_up()
    assert not pipeline.duplicates()
    assert pipeline.message_count() == 2 * len(set(in_kafka.values()))
