# kill -9 of the worker under a stream of webhooks loses nothing and
# doubles nothing: rows and offsets commit in one transaction.

import random
import threading
import time

from harness import Client, run_threads, transcript, wait_until

N = 2000            # webhooks
THREADS = 8
RESEND_EVERY = 10   # every 10th webhook is sent twice, as a retrying sender would
KILLS = 5


def wait_for_progress(pipeline, rows, expected, timeout=60):
    """Wait until `rows` messages of this test are committed.  False when
    all `expected` are (nothing left to interrupt) or on a stall (the final
    count reports it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = pipeline.message_count()
        if n >= expected:
            return False
        if n >= rows:
            return True
        pipeline.worker.assert_alive()
        time.sleep(0.02)
    return False


def _corpus(pipeline):
    bodies, expected = [], 0
    for i in range(N):
        cid = pipeline.cid(f"w{i}")
        n = 1 + i % 3
        if i % 2 == 0:      # seed shape: entries carry ids
            entries = [(f"{cid}-m{j}", ("user", "assistant")[j % 2],
                        f"message {j} of webhook {i}") for j in range(n)]
        else:               # vendor shape: no ids, system prompt first
            entries = [("system", "You are a helpful assistant.")] + [
                (("user", "assistant")[j % 2], f"message {j} of webhook {i}")
                for j in range(n - 1)]
        bodies.append((cid, transcript(cid, entries)))
        expected += n
    return bodies, expected


def test_kill_9_under_load(pipeline, services):
    # Static membership: the restarted worker takes the killed one's place
    # at once instead of waiting for its session to time out.
    crash_tuning = {"kafka__group.instance.id": f"{pipeline.group}-w",
                    "kafka__session.timeout.ms": 6000,
                    "kafka__heartbeat.interval.ms": 1000}
    worker = pipeline.start_worker(batch_max=100, **crash_tuning)
    ingest = pipeline.start_ingest()
    bodies, expected = _corpus(pipeline)

    accepted = set()
    errors = []
    lock = threading.Lock()
    done = threading.Event()
    sent_in = []

    def send(t):
        client = Client(ingest.port)
        try:
            for i in range(t, N, THREADS):
                cid, body = bodies[i]
                for _ in range(1 + (i % RESEND_EVERY == 0)):
                    r = None
                    for _attempt in range(10):
                        r = client.post(body, retries=3)
                        if r.status != 503:
                            break
                        time.sleep(0.2)
                    if r.status == 202:
                        with lock:
                            accepted.add(cid)
                    else:
                        with lock:
                            errors.append((cid, r))
        finally:
            client.close()

    def load():
        try:
            run_threads(THREADS, send)
        finally:
            sent_in.append(round(time.monotonic() - t0, 2))
            done.set()

    loader = threading.Thread(target=load, daemon=True)
    t0 = time.monotonic()
    loader.start()

    # Kill the worker KILLS times, each once it has been seen to commit more
    # rows (so it is in the middle of its next batches), at a random depth;
    # restart it after each kill.  The later kills fall on the backlog that
    # built up while it was down.
    rnd = random.Random(0x5EED)
    kills = []
    last = 0
    for k in range(KILLS):
        step = rnd.randint(50, 400)
        if not wait_for_progress(pipeline, last + step, expected):
            break           # everything landed before this kill
        time.sleep(rnd.uniform(0, 0.05))
        worker.kill9()
        last = pipeline.message_count()
        kills.append((round(time.monotonic() - t0, 2), last, len(accepted)))
        pipeline.restart(worker)

    loader.join(300)
    assert not loader.is_alive(), "the senders did not finish in 300 s"
    assert not errors, (f"{len(errors)} webhooks not accepted, e.g. "
                        f"{errors[:5]}")
    assert len(accepted) == N, f"{len(accepted)} of {N} accepted"
    print(f"sent in {sent_in} s; kills (s, rows committed, webhooks "
          f"accepted): {kills}")
    assert kills and kills[0][1] < expected // 2, (
        f"the first kill came too late to be 'midway': {kills}")

    wait_until(lambda: pipeline.message_count() >= expected, 180, 0.5,
               message=f"{expected} messages in PostgreSQL after kill -9 "
               f"at (s, rows, accepted) {kills}",
               describe=lambda: f"{pipeline.message_count()} messages")
    pipeline.wait_caught_up(timeout=60)

    got = pipeline.message_count()
    dups = pipeline.duplicates()
    assert not dups, f"duplicated (conversation, external id): {dups}"
    assert got == expected, f"{got} messages in PostgreSQL, {expected} sent"

    rows = services.query(
        "SELECT id, transcript_received FROM conversations"
        " WHERE starts_with(id, %s)", (pipeline.prefix,))
    present = {cid for cid, _ in rows}
    missing = sorted(accepted - present)
    assert not missing, (f"{len(missing)} accepted conversations missing, "
                         f"e.g. {missing[:5]}")
    not_marked = [cid for cid, tr in rows if not tr]
    assert not not_marked, f"transcript_received false for {not_marked[:5]}"
    per_conv = dict(services.query(
        "SELECT conversation_id, count(*) FROM messages"
        " WHERE starts_with(conversation_id, %s) GROUP BY 1",
        (pipeline.prefix,)))
    wrong = [(cid, per_conv.get(cid), 1 + i % 3)
             for i, (cid, _) in enumerate(bodies)
             if per_conv.get(cid) != 1 + i % 3]
    assert not wrong, f"(conversation, rows, expected) wrong: {wrong[:5]}"
