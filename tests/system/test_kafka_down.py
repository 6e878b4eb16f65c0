# Kafka down: ingest answers 503 with Retry-After within its delivery
# deadline, never 202; once Kafka is back, requests are accepted again and
# the worker lands them.

import time

from harness import run_threads, transcript, wait_until

DELIVERY_TIMEOUT_MS = 3000
MARGIN_S = 3.0


def test_kafka_down_then_back(pipeline, services):
    pipeline.start_worker(**{"kafka__session.timeout.ms": 6000})
    ingest = pipeline.start_ingest(delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
                                   retry_after_s=2)
    before = pipeline.cid("before")
    r = ingest.post(transcript(before, [("user", "before the outage")]))
    assert r.status == 202, f"with Kafka up: {r!r}"
    wait_until(lambda: pipeline.message_count(before) == 1, 30,
               message="the message sent before the outage to land")

    down = []
    try:
        services.stop_kafka()
        assert not services.kafka_up(timeout=2), "Kafka still answers"

        # A few at once, on separate connections: each gets its own 503.
        results = [None] * 4

        def one(i):
            cid = pipeline.cid(f"down{i}")
            down.append(cid)
            results[i] = ingest.post(
                transcript(cid, [("user", f"during the outage {i}")]),
                timeout=DELIVERY_TIMEOUT_MS / 1000 + 30)
        run_threads(len(results), one)
        for r in results:
            assert r.status != 202, f"202 while Kafka is down: {r!r}"
            assert r.status == 503, f"expected 503, got {r!r}"
            assert r.headers.get("retry-after") == "2", (
                f"503 without Retry-After: 2 (retry_after_s): {r.headers}")
            assert r.elapsed <= DELIVERY_TIMEOUT_MS / 1000 + MARGIN_S, (
                f"503 after {r.elapsed:.1f} s; deadline "
                f"{DELIVERY_TIMEOUT_MS} ms")
            assert isinstance(r.json, dict) and r.json.get("error"), (
                f"503 without a JSON error: {r!r}")
        assert ingest.request("GET", "/healthz").status == 200, (
            "ingest not alive while Kafka is down")
        ingest.assert_alive()
        pipeline.worker.assert_alive()
    finally:
        services.start_kafka()

    wait_until(lambda: services.kafka_up(timeout=2), 60,
               message="Kafka to come back")
    after = pipeline.cid("after")
    body = transcript(after, [("user", "after the outage"),
                              ("assistant", "welcome back")])
    statuses = []

    def accepted():
        r = ingest.post(body, timeout=DELIVERY_TIMEOUT_MS / 1000 + 30)
        statuses.append(r.status)
        assert r.status in (202, 503), f"after the outage: {r!r}"
        if r.status == 503:
            time.sleep(min(int(r.headers.get("retry-after", "1")), 2))
        return r.status == 202
    wait_until(accepted, 90, 0,
               message="a 202 once Kafka is back",
               describe=lambda: f"statuses so far {statuses}")

    wait_until(lambda: pipeline.message_count(after) == 2, 90, 0.25,
               message="the worker to land the message sent after the outage",
               describe=lambda: f"{pipeline.message_count(after)} rows; "
               f"worker log tail:\n{pipeline.worker.log_tail(15)}")
    # Whatever happened to the 503'd records, nothing is doubled.
    pipeline.wait_caught_up(timeout=60)
    assert not pipeline.duplicates()
    assert pipeline.message_count(before) == 1
