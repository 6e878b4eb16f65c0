# Batch validation (docs/campaigns.md, docs/chat.md): what a bad batch gets
# at the door, what the worker does with one already in Kafka, and what
# lands in PostgreSQL for the edge cases: a message id twice in one batch,
# a paused message re-posted under another run, integers in templates,
# end times at the edges of what a timestamptz and UTC hold, chat statuses
# and objects Meta does not send. Every campaign test ends by comparing
# each run's counters with its outbox rows.

import datetime as dt
import json
import time
import uuid

from confluent_kafka import Producer

from campaign_util import (CAMPAIGN_SOURCE, add_inbox, batch, check_counters,
                           counters, msg, post_batch, rows, run_row,
                           set_inbox, uid, wait_rows, wait_run, Pair)
from chat_util import (business_number, chat_ingest, post_chat, status,
                       statuses_of, text_message, wa_id, wait_messages,
                       wamid, webhook)
from harness import wait_until
from leadstub import LeadStub

UTC = dt.timezone.utc


def _pair(pipeline, tag, stub):
    return Pair(pipeline, tag, stub)


def _int_id():
    """An integer message id no other test uses (ids are global)."""
    return uuid.uuid4().int % 2**52


def _lead(stub, name):
    lead = uid(f"lead-{name}-")
    stub.set(lead, {"lead": {"name": name}})
    return lead


# ---------------------------------------------------------------- message ids

def test_duplicate_message_id_refused_at_the_door(pipeline, services):
    stub = LeadStub().start()
    try:
        p = _pair(pipeline, "dup", stub)
        inbox = add_inbox(services, uid("inbox-"))
        lead = _lead(stub, "Ann")
        before = services.topic_count(p.topic)
        run, n = uid("run-"), _int_id()
        # n and "n" are one id: both would be stored as the same text.
        body = batch(run, [msg(n, lead), msg(f"{run}-b", lead),
                           msg(str(n), lead), msg(f"{run}-b", lead)], inbox)
        r = post_batch(p.ingest, body, expect=None)
        assert r.status == 422, r
        errs = r.json["errors"]
        got = {(e.get("index"), e["path"]) for e in errs}
        assert got == {(2, "$.messages[2].message_id"),
                       (3, "$.messages[3].message_id")}, errs
        by_index = {e["index"]: e["message"] for e in errs}
        assert "$.messages[0].message_id" in by_index[2], by_index
        assert "$.messages[1].message_id" in by_index[3], by_index
        assert r.json["path"] == errs[0]["path"], r.json

        # Nothing published: the next batch is the topic's only record,
        # and it finishes its run.
        ok = uid("run-")
        post_batch(p.ingest, batch(ok, [msg(n, lead), msg(f"{ok}-b", lead)],
                                   inbox))
        wait_run(services, ok, lambda c: c["status"] == "finished",
                 worker=p.worker)
        assert services.topic_count(p.topic) == before + 1
        assert run_row(services, run) is None
        check_counters(services, [run, ok])
    finally:
        stub.stop()


def test_duplicate_message_id_in_kafka_is_dead_lettered(pipeline, services):
    """A batch accepted before the check (already in Kafka) is dead-lettered
    with the reason; it never becomes a run that cannot finish, and the
    partition moves on."""
    stub = LeadStub().start()
    try:
        p = _pair(pipeline, "dupk", stub)
        inbox = add_inbox(services, uid("inbox-"))
        lead = _lead(stub, "Bo")
        bad, good = uid("run-bad-"), uid("run-good-")
        headers = [("kind", b"campaign"),
                   ("source", CAMPAIGN_SOURCE.encode()),
                   ("event-type", b"campaign.batch"),
                   ("campaign-id", b"cmp-test"),
                   ("received-at", str(int(time.time() * 1000)).encode())]
        prod = Producer({"bootstrap.servers": services.brokers})
        n = _int_id()
        for run, ids in ((bad, [n, str(n)]), (good, [f"{good}-1", n])):
            body = batch(run, [msg(i, lead) for i in ids], inbox)
            prod.produce(p.topic, key=run.encode(), headers=headers,
                         value=json.dumps(body).encode())
        assert prod.flush(30) == 0
        # Same key order is not guaranteed across runs (two keys), so wait
        # for both effects.
        wait_run(services, good, lambda c: c["status"] == "finished",
                 worker=p.worker)
        wait_until(lambda: services.dlq_count(p.topic) == 1, 30, 0.2,
                   "the batch with a repeated id in the dead-letter topic")
        p.caught_up(services)
        (dead,) = services.topic_records(f"{p.topic}.dlq")
        assert dead["key"] == bad.encode(), dead["key"]
        reason = dead["headers"].get("dlq-reason", b"").decode()
        assert reason.startswith("$.messages[1].message_id"), reason
        assert "$.messages[0].message_id" in reason, reason
        assert run_row(services, bad) is None, "a run that cannot finish"
        assert rows(services, bad) == {}
        check_counters(services, [bad, good])
    finally:
        stub.stop()


def test_paused_message_reposted_under_another_run(pipeline, services):
    """The message belongs to the run that wrote it first: re-posted under
    x2 once the inbox is back, it becomes ready and x1's counters move
    (x1 finishes); x2 counts only its own messages."""
    stub = LeadStub().start()
    try:
        p = _pair(pipeline, "repost", stub)
        inbox = add_inbox(services, uid("inbox-"), connected=False)
        lead = _lead(stub, "Cy")
        x1, x2 = uid("run-x1-"), uid("run-x2-")
        ids = [f"{x1}-{i}" for i in range(5)]
        post_batch(p.ingest, batch(x1, [msg(i, lead) for i in ids], inbox))
        wait_run(services, x1, lambda c: c["paused"] == 5, worker=p.worker)
        check_counters(services, [x1])

        set_inbox(services, inbox, True)
        own = f"{x2}-own"
        post_batch(p.ingest, batch(x2, [msg(i, lead) for i in ids] +
                                   [msg(own, lead)], inbox, run_total=6))
        wait_run(services, x1, lambda c: c["status"] == "finished",
                 worker=p.worker, what="x1 finished by the re-post")
        p.caught_up(services)
        got = rows(services, x1)
        assert {m: (r["status"], r["parts"]) for m, r in got.items()} == {
            m: ("ready", ["Hi Cy"]) for m in ids}, got
        assert counters(services, x1) == {
            "total": 5, "processed": 5, "failed": 0, "paused": 0,
            "expired": 0, "status": "finished"}
        assert set(rows(services, x2)) == {own}
        assert counters(services, x2) == {
            "total": 6, "processed": 1, "failed": 0, "paused": 0,
            "expired": 0, "status": "running"}
        check_counters(services, [x1, x2])
    finally:
        stub.stop()


def test_message_of_two_runs_in_one_worker_batch(pipeline, services):
    """x1 and x2 both name m in records the worker reads in one go: m is
    x1's (the first to name it), x1 finishes, x2 counts nothing of it."""
    stub = LeadStub().start()
    try:
        p = _pair(pipeline, "onebatch", stub)
        inbox = add_inbox(services, uid("inbox-"))
        lead = _lead(stub, "Di")
        p.worker.stop()         # the records wait, then come in one poll
        x1, x2 = uid("run-x1-"), uid("run-x2-")
        m = f"{x1}-shared"
        headers = [("kind", b"campaign"),
                   ("source", CAMPAIGN_SOURCE.encode()),
                   ("event-type", b"campaign.batch"),
                   ("campaign-id", b"cmp-test")]
        prod = Producer({"bootstrap.servers": services.brokers,
                         "linger.ms": 50})
        for run, ids, total in ((x1, [m, f"{x1}-own"], 2),
                                (x2, [m, f"{x2}-own"], 2)):
            body = batch(run, [msg(i, lead) for i in ids], inbox,
                         run_total=total)
            prod.produce(p.topic, key=run.encode(), partition=0,
                         headers=headers, value=json.dumps(body).encode())
        assert prod.flush(30) == 0
        pipeline.restart(p.worker)
        p.caught_up(services)
        assert set(rows(services, x1)) == {m, f"{x1}-own"}
        assert set(rows(services, x2)) == {f"{x2}-own"}
        assert counters(services, x1)["status"] == "finished", \
            counters(services, x1)
        assert counters(services, x2) == {
            "total": 2, "processed": 1, "failed": 0, "paused": 0,
            "expired": 0, "status": "running"}
        check_counters(services, [x1, x2])
    finally:
        stub.stop()


# ---------------------------------------------------------------- numbers

def test_integer_vars_and_context_numbers(pipeline, services):
    stub = LeadStub().start()
    try:
        p = _pair(pipeline, "ints", stub)
        inbox = add_inbox(services, uid("inbox-"))
        lead = uid("lead-n-")
        stub.set(lead, {"lead": {"name": "N", "score": 123456789012,
                                 "big": 12345678901234567890,
                                 "ratio": 0.25}})
        run = uid("run-")
        tmpl = {
            "a": "{{vars.n}} {{vars.e}} {{vars.f}} {{lead.score}} "
                 "{{lead.ratio}}",
            "b": "{{vars.big}}",
            "c": "{{lead.big}}",
        }
        # 1e15 goes out as 1000000000000000.0 (Python's JSON).
        vars_ = {"n": 9007199254740991, "e": 1e15, "f": 1500.0,
                 "big": 12345678901234567890}
        for k, t in tmpl.items():
            post_batch(p.ingest, batch(f"{run}{k}", [msg(f"{run}{k}", lead,
                                                         vars_)],
                                       inbox, template=t,
                                       split_max_chars=1000))
        got = {k: next(iter(wait_rows(services, f"{run}{k}", 1,
                                      worker=p.worker).values()))
               for k in tmpl}
        assert (got["a"]["status"], got["a"]["parts"]) == (
            "ready", ["9007199254740991 1000000000000000 1500 "
                      "123456789012 0.25"]), got["a"]
        # Past 2^53 a double no longer holds the digits that were sent:
        # the message fails rather than show others.
        assert (got["b"]["status"], got["b"]["error"]) == (
            "failed", "inexact_number:vars.big"), got["b"]
        assert (got["c"]["status"], got["c"]["error"]) == (
            "failed", "inexact_number:lead.big"), got["c"]
        check_counters(services, [f"{run}{k}" for k in tmpl])
    finally:
        stub.stop()


# ---------------------------------------------------------------- end_time

def test_end_time_edges(pipeline, services):
    stub = LeadStub().start()
    try:
        p = _pair(pipeline, "times", stub)
        inbox = add_inbox(services, uid("inbox-"))
        lead = _lead(stub, "T")
        before = services.topic_count(p.topic)
        refused = {
            # year 10000 in UTC once the offset is applied
            "9999-12-31T23:59:59-23:59": "0001 to 9999",
            "0001-01-01T00:00:00+00:01": "0001 to 9999",
            # a leap second on a day that had none, or not at 23:59 UTC
            "2026-11-23T23:59:60Z": "leap second",
            "2016-12-31T23:59:60+01:00": "leap second",
        }
        for end, why in refused.items():
            r = post_batch(p.ingest, batch(uid("run-"), [msg(uid("m-"),
                                                             lead)],
                                           inbox, end_time=end), expect=None)
            assert r.status == 422, (end, r)
            assert r.json["path"] == "$.end_time", (end, r.json)
            assert why in r.json["message"], (end, r.json)
        assert services.topic_count(p.topic) == before

        accepted = {
            # cut to the microsecond, never rounded up, no float on the way
            "9999-12-31T23:59:59.999999999Z":
                dt.datetime(9999, 12, 31, 23, 59, 59, 999999, UTC),
            "2999-06-30T12:00:00.123456789+02:00":
                dt.datetime(2999, 6, 30, 10, 0, 0, 123456, UTC),
            # a real leap second, in another offset: its minute's last µs
            "2017-01-01T00:59:60+01:00":
                dt.datetime(2016, 12, 31, 23, 59, 59, 999999, UTC),
            "0001-01-01T00:00:00Z": dt.datetime(1, 1, 1, 0, 0, 0, 0, UTC),
        }
        runs = {}
        for end in accepted:
            runs[end] = uid("run-")
            post_batch(p.ingest, batch(runs[end], [msg(uid("m-"), lead)],
                                       inbox, end_time=end))
        p.caught_up(services)
        for end, want in accepted.items():
            # Read as text in UTC too: a client that cannot parse a year
            # past 9999 would fail on the row, not on this assertion.
            text = services.scalar(
                "SELECT to_char(end_time AT TIME ZONE 'UTC',"
                " 'YYYY-MM-DD HH24:MI:SS.US') FROM campaign_runs"
                " WHERE id = %s", (runs[end],))
            assert text == (
                f"{want.year:04d}-{want.month:02d}-{want.day:02d} "
                f"{want:%H:%M:%S.%f}"), (end, text)
        statuses = {end: counters(services, r)["status"]
                    for end, r in runs.items()}
        assert statuses == {
            "9999-12-31T23:59:59.999999999Z": "finished",
            "2999-06-30T12:00:00.123456789+02:00": "finished",
            "2017-01-01T00:59:60+01:00": "finished",  # expired: terminal
            "0001-01-01T00:00:00Z": "finished"}, statuses
        check_counters(services, list(runs.values()))
    finally:
        stub.stop()


# ---------------------------------------------------------------- chat

def test_chat_unknown_status_and_object_refused(pipeline, services):
    worker = pipeline.start_worker()
    ingest = chat_ingest(pipeline)
    biz, who = business_number(), wa_id()
    before = services.topic_count(pipeline.topic)
    out = wamid()

    r = post_chat(ingest, webhook(biz, statuses=[status(out, "exploded",
                                                        who)]), expect=None)
    assert r.status == 422, r
    assert r.json["path"] == \
        "$.entry[0].changes[0].value.statuses[0].status", r.json

    page = {"object": "page",
            "entry": [{"id": "1", "time": int(time.time()),
                       "changes": [{"field": "feed", "value": {}}]}]}
    r = post_chat(ingest, page, expect=None)
    assert r.status == 422, r
    assert r.json["path"] == "$.object", r.json
    # The right object with another product's change is still acknowledged.
    other = webhook(biz, field="account_update", value={"event": "x"})
    post_chat(ingest, other, expect=202)
    assert services.topic_count(pipeline.topic) == before

    # Documented values are stored as themselves, next to a message.
    mid = wamid()
    good = webhook(biz, [text_message(mid, who, "hi")],
                   [status(out, "deleted", who), status(out, "read", who)])
    post_chat(ingest, good)
    wait_messages(services, [mid], worker=worker)
    pipeline.wait_caught_up()
    got = [(s["status"], s["recipient_id"]) for s in
           statuses_of(services, [out])]
    assert got == [("deleted", who), ("read", who)], got
