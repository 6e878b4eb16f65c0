# PostgreSQL down: a transient failure.  The worker pauses and retries with
# backoff; nothing is skipped, nothing is doubled, and it keeps running.

import time

from harness import transcript, wait_until

N = 50


def test_postgres_down_then_back(pipeline, services):
    pipeline.start_worker(retry_backoff_min_ms=50, retry_backoff_max_ms=1000)
    ingest = pipeline.start_ingest()
    first = pipeline.cid("first")
    assert ingest.post(transcript(first, [("user", "hi")])).status == 202
    wait_until(lambda: pipeline.message_count(first) == 1, 30,
               message="the first message to land")

    cids = [pipeline.cid(f"d{i}") for i in range(N)]
    try:
        services.stop_postgres()
        for i, c in enumerate(cids):
            r = ingest.post(transcript(c, [(f"{c}-1", "user", f"q{i}"),
                                           (f"{c}-2", "assistant", f"a{i}")]))
            assert r.status == 202, f"ingest needs no database: {r!r}"
        # Let the worker fail and back off a few times.
        time.sleep(3)
        pipeline.worker.assert_alive()
    finally:
        services.start_postgres()

    wait_until(lambda: pipeline.message_count() == 2 * N + 1, 60, 0.25,
               message=f"{2 * N + 1} messages once PostgreSQL is back",
               describe=lambda: f"{pipeline.message_count()} messages; "
               f"worker log tail:\n{pipeline.worker.log_tail(10)}")
    pipeline.wait_caught_up()
    assert not pipeline.duplicates()
    missing = [c for c in cids if pipeline.message_count(c) != 2]
    assert not missing, f"conversations without their 2 rows: {missing[:5]}"
    n = services.dlq_count(pipeline.topic)
    assert n == 0, f"{n} records dead-lettered while PostgreSQL was down"
