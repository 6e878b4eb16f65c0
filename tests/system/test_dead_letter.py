# What a dead-lettered record carries: the reason naming the problem (with
# the JSON path for a schema violation), its origin as topic/partition@offset,
# and the record itself unchanged; the partition moves on past it.

import json
import re
import subprocess
import time

from confluent_kafka import Producer

from harness import (BUILD_DIR, SOURCE, TRANSCRIPT_READY, transcript,
                     wait_until)


def test_dead_letter_reason_origin_and_record(pipeline):
    s = pipeline.services
    t0_ms = time.time() * 1000
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
        # When, by which worker, by which version of sluice.
        when = int(h.get("dlq-time", b"0"))
        assert t0_ms - 1000 <= when <= time.time() * 1000 + 1000, (key, h)
        assert re.fullmatch(rb"[^:]+:\d+", h.get("dlq-worker", b"")), h
        assert re.fullmatch(rb"\d+\.\d+\.\d+.*", h.get("dlq-version",
                                                        b"")), h
        for name, v in hdrs:
            assert h.get(name) == v, (key, name, h)
    assert s.dlq_count(pipeline.topic) == len(bad), "dead-lettered twice"
    assert worker.batch_totals() == (2, 0)


def test_dlq_list_and_show(pipeline):
    """sluice-worker dlq list / show: what is in the dead-letter topic,
    read without changing anything (a drill: a record that is not JSON is
    dead-lettered on purpose)."""
    s = pipeline.services
    worker = pipeline.start_worker()
    cfg = pipeline._write("dlq-tool.conf", pipeline.last_worker_settings)

    def dlq(*args):
        r = subprocess.run([str(BUILD_DIR / "sluice-worker"), "dlq", *args,
                            "-c", str(cfg)], capture_output=True, text=True,
                           timeout=60, env=pipeline.env)
        for marker in ("AddressSanitizer", "runtime error:"):
            assert marker not in r.stderr, r.stderr[-3000:]
        return r

    empty = dlq("list")
    assert empty.returncode == 0, empty.stderr[-2000:]
    assert "holds no records" in empty.stdout or \
        "0 records shown" in empty.stdout, empty.stdout
    headers = [("kind", b"transcript"), ("source", SOURCE.encode())]
    p = Producer({"bootstrap.servers": s.brokers})
    keys = [pipeline.cid(f"bad{i}") for i in range(3)]
    for i, k in enumerate(keys):
        p.produce(pipeline.topic, key=k.encode(), partition=0,
                  value=b"{not json " + str(i).encode() + b" " +
                  b"x" * 300, headers=headers)
    assert p.flush(30) == 0
    t0 = time.time()
    wait_until(lambda: s.dlq_count(pipeline.topic) == 3, 30, 0.2,
               "3 records in the dead-letter topic")

    r = dlq("list", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    # Keyed records spread over the dead-letter topic's partitions: listed
    # partition by partition, each in offset order.
    rows = sorted((json.loads(line) for line in r.stdout.splitlines()),
                  key=lambda row: row["key"])
    assert [row["key"] for row in rows] == keys, rows
    for i, row in enumerate(rows):
        h = row["headers"]
        assert h["dlq-reason"].startswith("value is not a JSON object"), h
        assert re.fullmatch(rf"{pipeline.topic}/0@\d+", h["dlq-origin"]), h
        assert abs(int(h["dlq-time"]) / 1000 - t0) < 60, h
        assert row["bytes"] == len(b"{not json 0 ") + 300
        head = f"{{not json {i} "
        assert row["preview"].startswith(head), row
        assert set(row["preview"][len(head):]) == {"x"}, row
        assert len(row["preview"]) == 120, row
    text = dlq("list", "--limit", "2")
    assert text.returncode == 0
    assert text.stdout.count("reason: value is not a JSON object") == 2
    assert "2 records shown" in text.stdout and "more left" in text.stdout

    part, off = rows[1]["partition"], rows[1]["offset"]
    whole = dlq("show", f"{part}:{off}", "--json")
    assert whole.returncode == 0, whole.stderr[-2000:]
    one = json.loads(whole.stdout)
    assert one["value"] == "{not json 1 " + "x" * 300, one
    assert one["headers"]["kind"] == "transcript"
    missing = dlq("show", f"{part}:{off + 100}")
    assert missing.returncode == 3 and "no record" in missing.stderr
    # Read-only: the records are all still there, and the worker never
    # saw them again.
    assert s.dlq_count(pipeline.topic) == 3
    assert worker.running()
