# What a dead-lettered record carries: the reason naming the problem (with
# the JSON path for a schema violation), its origin as topic/partition@offset,
# and the record itself unchanged; the partition moves on past it.

import json
import time

from confluent_kafka import Producer

from harness import SOURCE, TRANSCRIPT_READY, transcript, wait_until


def test_dead_letter_reason_origin_and_record(pipeline):
    s = pipeline.services
    worker = pipeline.start_worker()
    worker.stop()          # the topic exists; the records wait for it
    received = str(int(time.time() * 1000)).encode()
    headers = [("kind", b"transcript"), ("source", SOURCE.encode()),
               ("received-at", received), ("request-id", b"req-dlq-1")]
    good_before, good_after = pipeline.cid("before"), pipeline.cid("after")
    bad = {
        # key: (value, headers, what the reason must start with)
        pipeline.cid("notjson"): (b"{not json", headers,
                                  "value is not a JSON object"),
        pipeline.cid("schema"): (json.dumps(
            {"event_type": TRANSCRIPT_READY,
             "conversation_id": "c-schema",
             "properties": {"transcript": "not a list"}}).encode(),
            headers, "$.properties.transcript"),
        pipeline.cid("role"): (json.dumps(transcript(
            "c-role", [("r" * 65, "text")])).encode(), headers,
            "$.properties.transcript[0]"),
        pipeline.cid("kind"): (json.dumps(transcript(
            "c-kind", [("user", "x")])).encode(),
            [("kind", b"fax"), ("source", SOURCE.encode())],
            'unknown kind "fax"'),
    }
    p = Producer({"bootstrap.servers": s.brokers, "linger.ms": 20})
    offsets = {}

    def note(key):
        def cb(err, msg):
            assert err is None, err
            offsets[key] = msg.offset()
        return cb
    p.produce(pipeline.topic, key=good_before.encode(), partition=0,
              value=json.dumps(transcript(good_before, [("user", "a")])),
              headers=headers, on_delivery=note(good_before))
    for key, (value, hdrs, _) in bad.items():
        p.produce(pipeline.topic, key=key.encode(), partition=0, value=value,
                  headers=hdrs, on_delivery=note(key))
    p.produce(pipeline.topic, key=good_after.encode(), partition=0,
              value=json.dumps(transcript(good_after, [("user", "b")])),
              headers=headers, on_delivery=note(good_after))
    assert p.flush(30) == 0

    pipeline.restart(worker)
    pipeline.wait_caught_up()
    # The partition moved on: what came after the bad records is there.
    assert pipeline.message_count(good_before) == 1
    assert pipeline.message_count(good_after) == 1
    wait_until(lambda: s.dlq_count(pipeline.topic) == len(bad), 30, 0.2,
               f"{len(bad)} records in the dead-letter topic")

    dead = {m["key"].decode(): m
            for m in s.topic_records(f"{pipeline.topic}.dlq")}
    assert set(dead) == set(bad), sorted(dead)
    for key, (value, hdrs, reason) in bad.items():
        m = dead[key]
        h = m["headers"]
        assert m["value"] == value, (key, m["value"][:200])
        got = h.get("dlq-reason", b"").decode()
        assert got.startswith(reason), (
            f"{key}: dlq-reason {got!r}, want it to start with {reason!r}")
        assert h.get("dlq-origin") == (
            f"{pipeline.topic}/0@{offsets[key]}".encode()), (key, h)
        for name, v in hdrs:
            assert h.get(name) == v, (key, name, h)
    assert s.dlq_count(pipeline.topic) == len(bad), "dead-lettered twice"
    assert worker.batch_totals() == (2, 0)
