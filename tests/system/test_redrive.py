# `sluice-worker redrive`: dead-lettered records go back to the topic they
# came from, with an attempt count; one sent back too often stays dead and
# is reported.

import json
import re

from harness import SOURCE, produce_record, transcript, wait_until, worker_cmd


def redrive(pipeline, *args, timeout=120):
    return worker_cmd(pipeline, "redrive", *args, timeout=timeout)


def summary(out):
    m = re.search(r"redrive (done|stopped): (\d+) records read, (\d+) "
                  r"(?:would be )?sent back, (\d+) stay dead", out)
    assert m, out
    return int(m.group(2)), int(m.group(3)), int(m.group(4))


def test_redrive_sends_back_counts_attempts_and_keeps_the_hopeless(pipeline):
    s = pipeline.services
    dlq = f"{pipeline.topic}.dlq"
    worker = pipeline.start_worker()
    cid_bad = pipeline.cid("bad")
    cid_fixed = pipeline.cid("fixed")

    # 1. a record the worker can never take: dead-lettered with its origin
    produce_record(s.brokers, pipeline.topic, cid_bad, b"not json",
            [("kind", "transcript"), ("source", SOURCE)])
    wait_until(lambda: s.dlq_count(pipeline.topic) == 1, 60, 0.2,
               "the bad record in the dead-letter topic")
    # 2. one an older worker dead-lettered for a reason fixed since: a
    # valid transcript, as the dead-letter topic holds it
    body = json.dumps(transcript(cid_fixed, [("e1", "user", "back again")]))
    produce_record(s.brokers, dlq, cid_fixed, body.encode(),
            [("kind", "transcript"), ("source", SOURCE),
             ("dlq-reason", "unknown kind \"transcript\""),
             ("dlq-origin", f"{pipeline.topic}/0@0")])
    topic_before = s.topic_count(pipeline.topic)

    # dry run: reports, sends nothing, moves nothing
    r = redrive(pipeline, "--dry-run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert summary(r.stdout) == (2, 2, 0), r.stdout
    assert s.topic_count(pipeline.topic) == topic_before
    # ... record by record: where each is, where it would go, why it died.
    would = re.findall(r"^would send back: (\S+) to (\S+) \(attempt 1\); "
                       r"reason: (.*)$", r.stdout, re.M)
    assert len(would) == 2, r.stdout
    assert all(re.fullmatch(rf"{dlq}/\d+@\d+", w[0]) and
               re.fullmatch(rf"{pipeline.topic}/\d+@\d+", w[1])
               for w in would), would
    reasons = sorted(w[2] for w in would)
    assert reasons[0].startswith("unknown kind") and \
        reasons[1].startswith("value is not a JSON object"), reasons

    r = redrive(pipeline)
    assert r.returncode == 0, r.stderr[-3000:]
    assert summary(r.stdout) == (2, 2, 0), r.stdout
    assert s.topic_count(pipeline.topic) == topic_before + 2
    back = [m for m in s.topic_records(pipeline.topic)
            if m["headers"].get("redrive-attempts")]
    assert sorted(m["key"].decode() for m in back) == sorted(
        [cid_bad, cid_fixed])
    for m in back:
        assert m["headers"]["redrive-attempts"] == b"1"
        assert m["headers"]["kind"] == b"transcript"
        assert "dlq-reason" not in m["headers"]
        assert m["headers"]["redrive-of"].startswith(dlq.encode() + b"/")

    # the fixed one becomes its row; the bad one is dead again, counted
    wait_until(lambda: pipeline.message_count(cid_fixed) == 1, 60, 0.2,
               "the redriven transcript in PostgreSQL")
    wait_until(lambda: s.dlq_count(pipeline.topic) == 3, 60, 0.2,
               "the bad record dead-lettered again")
    again = [m for m in s.topic_records(dlq)
             if m["headers"].get("redrive-attempts")]
    assert len(again) == 1 and again[0]["key"] == cid_bad.encode()
    assert again[0]["headers"]["redrive-attempts"] == b"1"
    assert again[0]["headers"]["dlq-origin"].startswith(
        pipeline.topic.encode() + b"/")

    # only what is new since the last run is read; at the limit it stays
    r = redrive(pipeline, "--max-attempts", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert summary(r.stdout) == (1, 0, 1), r.stdout
    assert re.search(r"stays dead: \S+ \(from \S+\) after 1 attempts; "
                     r"reason: value is not a JSON object", r.stdout), r.stdout
    assert s.topic_count(pipeline.topic) == topic_before + 2

    r = redrive(pipeline)
    assert r.returncode == 0, r.stderr[-3000:]
    assert summary(r.stdout) == (0, 0, 0), r.stdout
    assert pipeline.message_count(cid_fixed) == 1
    worker.assert_alive()


def test_redrive_without_dead_letters(pipeline):
    pipeline.start_worker()
    r = redrive(pipeline)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "nothing to redrive" in r.stdout or \
        summary(r.stdout) == (0, 0, 0), r.stdout


def test_max_attempts_zero_means_no_limit(pipeline):
    """A record sent back more often than the default limit stays dead by
    default and goes back with --max-attempts 0."""
    s = pipeline.services
    dlq = f"{pipeline.topic}.dlq"
    pipeline.start_worker()
    cid = pipeline.cid("tenacious")
    body = json.dumps(transcript(cid, [("e1", "user", "seventh time")]))
    produce_record(s.brokers, dlq, cid, body.encode(),
            [("kind", "transcript"), ("source", SOURCE),
             ("dlq-reason", "database was down"),
             ("dlq-origin", f"{pipeline.topic}/0@0"),
             ("redrive-attempts", "7")])
    topic_before = s.topic_count(pipeline.topic)

    r = redrive(pipeline, "--dry-run")
    assert r.returncode == 0, r.stderr[-3000:]
    assert summary(r.stdout) == (1, 0, 1), r.stdout
    assert "after 7 attempts" in r.stdout, r.stdout

    r = redrive(pipeline, "--dry-run", "--max-attempts", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert summary(r.stdout) == (1, 1, 0), r.stdout
    assert "(attempt 8)" in r.stdout and "no limit on attempts" in r.stdout

    r = redrive(pipeline, "--max-attempts", "0")
    assert r.returncode == 0, r.stderr[-3000:]
    assert summary(r.stdout) == (1, 1, 0), r.stdout
    assert s.topic_count(pipeline.topic) == topic_before + 1
    back = [m for m in s.topic_records(pipeline.topic)
            if m["key"] == cid.encode()]
    assert [m["headers"]["redrive-attempts"] for m in back] == [b"8"]
    wait_until(lambda: pipeline.message_count(cid) == 1, 60, 0.2,
               "the redriven transcript in PostgreSQL")

    bad = redrive(pipeline, "--max-attempts", "-1")
    assert bad.returncode == 2 and "0: no limit" in bad.stderr, bad.stderr
