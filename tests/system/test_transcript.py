# Transcript callbacks: from POST to Kafka record to rows in PostgreSQL,
# with duplicates (retries, replays, the "type" spelling) adding nothing.

import json
import time
import uuid
from pathlib import Path

from harness import SOURCE, TRANSCRIPT_READY, event, transcript, wait_until


def _accepted(r, cid, event_type=TRANSCRIPT_READY, webhook_id=None):
    assert r.status == 202, f"expected 202, got {r!r}"
    assert r.headers.get("content-type", "").startswith("application/json"), (
        f"202 Content-Type: {r.headers.get('content-type')!r}")
    body = r.json
    assert isinstance(body, dict), f"202 body is not a JSON object: {r.body!r}"
    assert body.get("status") == "accepted", body
    assert body.get("conversationId") == cid, body
    assert body.get("eventType") == event_type, body
    assert isinstance(body.get("id"), str) and body["id"], (
        f"202 body has no webhook id: {body}")
    if webhook_id is not None:
        assert body["id"] == webhook_id, (
            f"202 id {body['id']!r} is not the webhook-id header "
            f"{webhook_id!r}")
    return body


def _wait_rows(pipeline, cid, n, timeout=30):
    return wait_until(lambda: pipeline.message_count(cid) == n and
                      pipeline.messages(cid),
                      timeout, message=f"{n} messages of {cid} in PostgreSQL",
                      describe=lambda: pipeline.messages(cid))


def _assert_conversation(pipeline, cid, last_event_type=TRANSCRIPT_READY,
                         transcript_received=True):
    conv = pipeline.conversation(cid)
    assert conv is not None, f"no conversations row for {cid}"
    assert conv["transcript_received"] is transcript_received, conv
    assert conv["last_event_type"] == last_event_type, conv
    assert conv["source"] == SOURCE, conv
    if transcript_received:
        assert conv["transcript_received_at"] is not None, conv
    return conv


def _resend_three_ways(pipeline, body, cid):
    """The same callback again, as a retry would, and once more spelled with
    "type" instead of "event_type"; every one is accepted."""
    _accepted(pipeline.ingest.post(body), cid)
    _accepted(pipeline.ingest.post(body), cid)
    typed = dict(body)
    typed["type"] = typed.pop("event_type")
    _accepted(pipeline.ingest.post(typed), cid)


def test_seed_shape_lands_once(pipeline):
    pipeline.start_worker()
    pipeline.start_ingest()
    cid = pipeline.cid("seed")
    entries = [("m-1", "user", "Hi, I'd like to book a demo."),
               ("m-2", "assistant", "Sure! Which day suits you?"),
               ("m-3", "user", "Thursday — après 14h, s'il vous plaît 👋")]
    body = transcript(cid, entries)
    _accepted(pipeline.ingest.post(body), cid)

    rows = _wait_rows(pipeline, cid, 3)
    assert rows == [(0, "user", entries[0][2], "m-1"),
                    (1, "assistant", entries[1][2], "m-2"),
                    (2, "user", entries[2][2], "m-3")], rows
    _assert_conversation(pipeline, cid)

    _resend_three_ways(pipeline, body, cid)
    pipeline.wait_caught_up()
    assert pipeline.messages(cid) == rows, "a duplicate callback added rows"
    _assert_conversation(pipeline, cid)
    saved, skipped = pipeline.worker.batch_totals()
    assert (saved, skipped) == (3, 9), (
        f"worker logs add up to saved {saved} messages, skipped {skipped} "
        f"duplicates; expected 3 and 9")


def test_vendor_shape_without_ids_lands_once(pipeline):
    pipeline.start_worker()
    pipeline.start_ingest()
    cid = pipeline.cid("vendor")
    entries = [("system", "You are a friendly sales assistant."),
               ("user", "Hi"),
               ("assistant", "Hello!"),
               ("user", "Hello!")]          # same content, other position
    body = transcript(cid, entries)
    _accepted(pipeline.ingest.post(body), cid)

    rows = _wait_rows(pipeline, cid, 4)
    assert [(p, role, content) for p, role, content, _ in rows] == [
        (i, role, content) for i, (role, content) in enumerate(entries)], rows
    ids = [r[3] for r in rows]
    assert all(isinstance(i, str) and i for i in ids), ids
    assert len(set(ids)) == 4, f"generated external_event_ids collide: {ids}"
    _assert_conversation(pipeline, cid)

    _resend_three_ways(pipeline, body, cid)
    pipeline.wait_caught_up()
    again = pipeline.messages(cid)
    assert again == rows, (
        f"a replay changed the rows (generated ids must be deterministic):\n"
        f"before {rows}\nafter  {again}")
    saved, skipped = pipeline.worker.batch_totals()
    assert (saved, skipped) == (4, 12), (
        f"worker logs add up to saved {saved} messages, skipped {skipped} "
        f"duplicates; expected 4 and 12")


def test_batch_of_new_and_known_rows(pipeline):
    """A batch whose messages go straight into the table with COPY meets a
    row that is there already: the batch is written again the staged way,
    and every new row lands once, the known one is skipped, nothing else is
    lost. Its timestamps are the records' receipt times either way."""
    pipeline.start_worker()
    pipeline.start_ingest()
    known = pipeline.cid("known")
    t0 = time.time()
    _accepted(pipeline.ingest.post(transcript(
        known, [("k-1", "user", "first"), ("k-2", "assistant", "second")])),
        known)
    _wait_rows(pipeline, known, 2)
    # The worker away, three records wait for it: one batch when it is back.
    pipeline.worker.stop()
    fresh, other = pipeline.cid("fresh"), pipeline.cid("other")
    _accepted(pipeline.ingest.post(transcript(
        fresh, [("user", "a\tb"), ("assistant", "c\\d"), ("user", "e\nf")])),
        fresh)
    _accepted(pipeline.ingest.post(transcript(
        known, [("k-1", "user", "first"), ("k-2", "assistant", "second"),
                ("k-3", "user", "third")])), known)
    _accepted(pipeline.ingest.post(transcript(
        other, [("o-1", "user", "x"), ("o-2", "user", "y")])), other)
    pipeline.restart(pipeline.worker)
    pipeline.wait_caught_up()
    t1 = time.time()
    assert [r[2] for r in pipeline.messages(fresh)] == ["a\tb", "c\\d", "e\nf"]
    assert [r[3] for r in pipeline.messages(known)] == ["k-1", "k-2", "k-3"]
    assert [r[3] for r in pipeline.messages(other)] == ["o-1", "o-2"]
    assert pipeline.duplicates() == []
    assert pipeline.worker.batch_totals() == (2 + 3 + 1 + 2, 2)
    stamps = [r[0] for r in pipeline.services.query(
        "SELECT extract(epoch FROM created_at) FROM messages"
        " WHERE starts_with(conversation_id, %s)", (pipeline.prefix,))]
    assert len(stamps) == 8 and all(
        t0 - 1 <= float(s) <= t1 + 1 for s in stamps), (t0, t1, stamps)


def test_dead_letter_in_a_streamed_batch(pipeline):
    """A batch of distinct conversations sends its rows while it decodes;
    a record it can never take, late in the batch, stops that stream and
    the batch is built again: every good row lands once and the bad record
    is dead-lettered once."""
    from confluent_kafka import Producer
    s = pipeline.services
    # One fetch takes the whole partition, so the records are one batch.
    worker = pipeline.start_worker(
        kafka__max__partition__fetch__bytes=16 << 20)
    worker.stop()
    cids = [pipeline.cid(f"big{i}") for i in range(8)]
    p = Producer({"bootstrap.servers": s.brokers, "linger.ms": 50})
    headers = [("kind", b"transcript"), ("source", SOURCE.encode()),
               ("received-at", str(int(time.time() * 1000)).encode())]
    # Over 1 MiB of rows (a chunk) before the bad record, all on one
    # partition so that they are one batch.
    for cid in cids:
        body = transcript(cid, [("user", f"entry {i} " + "x" * 1000)
                                for i in range(150)])
        p.produce(pipeline.topic, key=cid.encode(), partition=0,
                  value=json.dumps(body).encode(), headers=headers)
    bad = pipeline.cid("bad")
    p.produce(pipeline.topic, key=bad.encode(), partition=0,
              value=b"not json", headers=headers)
    assert p.flush(30) == 0
    pipeline.restart(worker)
    pipeline.wait_caught_up()
    for cid in cids:
        assert pipeline.message_count(cid) == 150, cid
    assert pipeline.duplicates() == []
    wait_until(lambda: s.dlq_count(pipeline.topic) == 1, 30, 0.2,
               "the bad record in the dead-letter topic")
    time.sleep(1)
    assert s.dlq_count(pipeline.topic) == 1, "dead-lettered more than once"
    assert worker.batch_totals() == (1200, 0)


def test_type_spelling_first(pipeline):
    """A sender that only ever says "type" is handled like "event_type"."""
    pipeline.start_worker()
    pipeline.start_ingest()
    cid = pipeline.cid("typed")
    body = transcript(cid, [("user", "Hi"), ("assistant", "Hello!")],
                      type_key="type")
    _accepted(pipeline.ingest.post(body), cid)
    rows = _wait_rows(pipeline, cid, 2)
    assert [r[:3] for r in rows] == [(0, "user", "Hi"),
                                     (1, "assistant", "Hello!")], rows
    _assert_conversation(pipeline, cid)


def test_integer_entry_ids(pipeline):
    """The schema allows integer entry ids; they are kept as text."""
    pipeline.start_worker()
    pipeline.start_ingest()
    cid = pipeline.cid("intids")
    body = transcript(cid, [(101, "user", "one"), (102, "assistant", "two")])
    _accepted(pipeline.ingest.post(body), cid)
    rows = _wait_rows(pipeline, cid, 2)
    assert rows == [(0, "user", "one", "101"),
                    (1, "assistant", "two", "102")], rows


def test_lifecycle_events(pipeline):
    """Events without a transcript upsert the conversation and record the
    last event type; one conversation keeps its order."""
    pipeline.start_worker()
    pipeline.start_ingest()
    cid = pipeline.cid("life")

    _accepted(pipeline.ingest.post(event(cid, "system.replica_joined")), cid,
              "system.replica_joined")
    conv = wait_until(lambda: pipeline.conversation(cid), 30,
                      message=f"conversations row for {cid}")
    assert conv["last_event_type"] == "system.replica_joined", conv
    assert conv["transcript_received"] is False, conv
    assert pipeline.message_count(cid) == 0

    for et in ("application.recording_ready", "system.shutdown"):
        _accepted(pipeline.ingest.post(event(cid, et)), cid, et)
    body = transcript(cid, [("user", "Hi"), ("assistant", "Bye")])
    _accepted(pipeline.ingest.post(body), cid)
    _accepted(pipeline.ingest.post(event(cid, "system.shutdown",
                                         type_key="type")),
              cid, "system.shutdown")
    pipeline.wait_caught_up()
    _assert_conversation(pipeline, cid, last_event_type="system.shutdown")
    assert pipeline.message_count(cid) == 2


def test_stored_conversation_updated(pipeline, services):
    """A conversation already stored is updated in place by each later
    batch: a status only by an event that sets one, the last event type
    always, the transcript flag and its first time kept."""
    pipeline.start_worker()
    pipeline.start_ingest()
    cid = pipeline.cid("stored")

    def row():
        return services.query(
            "SELECT status, last_event_type, transcript_received,"
            " transcript_received_at, created_at FROM conversations"
            " WHERE id = %s", (cid,))[0]

    steps = [(event(cid, "system.replica_joined"), "system.replica_joined",
              ("active", "system.replica_joined", False)),
             (event(cid, "system.shutdown"), "system.shutdown",
              ("ended", "system.shutdown", False)),
             (event(cid, "application.recording_ready"),
              "application.recording_ready",
              ("ended", "application.recording_ready", False)),
             (transcript(cid, [("user", "Hi")]), TRANSCRIPT_READY,
              ("ended", TRANSCRIPT_READY, True))]
    created = None
    for body, et, want in steps:
        _accepted(pipeline.ingest.post(body), cid, et)
        pipeline.wait_caught_up()  # each in a batch of its own
        got = row()
        assert got[:3] == want, (et, got)
        created = created or got[4]
        assert got[4] == created, "created_at moved"
    first_at = row()[3]
    assert first_at is not None
    _accepted(pipeline.ingest.post(transcript(cid, [("user", "Hi")])), cid)
    _accepted(pipeline.ingest.post(event(cid, "system.replica_joined")), cid,
              "system.replica_joined")
    pipeline.wait_caught_up()
    got = row()
    assert got[:4] == ("active", "system.replica_joined", True, first_at), got
    assert pipeline.message_count(cid) == 1


def test_kafka_record(pipeline, services):
    pipeline.start_ingest()
    cid = pipeline.cid("record")
    wid = f"msg_{uuid.uuid4().hex}"
    # Odd but valid formatting: the record must be the bytes as received,
    # not a re-serialization.
    body = (
        '{ "event_type" : "application.transcription_ready",\n'
        f'  "conversation_id":"{cid}", "message_type":"application",\n'
        '  "timestamp":"2025-05-01T12:00:00.123456Z",\r\n'
        '  "properties": {"replica_id":"r1", "transcript": [\n'
        '     {"role":"user","content":"caf\\u00e9 \\"quoted\\" 1.50e2"},\n'
        '     {"role":"assistant","content":"ok 👍"} ] } }\n'
    ).encode("utf-8")
    t0 = int(time.time() * 1000)
    r = pipeline.ingest.post(body, headers={"webhook-id": wid})
    t1 = int(time.time() * 1000)
    _accepted(r, cid, webhook_id=wid)

    r2 = pipeline.ingest.post(transcript(pipeline.cid("noid"), [("user", "x")]))
    generated = _accepted(r2, r2.json and r2.json.get("conversationId"))["id"]

    recs = services.topic_records(pipeline.topic)
    assert len(recs) == 2, f"expected 2 records in {pipeline.topic}, got " \
        f"{len(recs)}"
    rec = next((x for x in recs if x["key"] == cid.encode()), None)
    assert rec is not None, f"no record keyed {cid!r}: keys " \
        f"{[x['key'] for x in recs]}"
    assert rec["value"] == body, (
        f"record value differs from the body sent:\n{rec['value']!r}\n"
        f"{body!r}")
    h = rec["headers"]
    for name in ("source", "kind", "event-type", "webhook-id", "received-at",
                 "request-id"):
        assert name in h, f"header {name!r} missing: {rec['header_list']}"
        names = [k for k, _ in rec["header_list"]]
        assert names.count(name) == 1, f"header {name!r} repeated: {names}"
    assert h["source"] == SOURCE.encode(), h
    assert h["kind"] == b"transcript", h
    assert h["event-type"] == TRANSCRIPT_READY.encode(), h
    assert h["webhook-id"] == wid.encode(), h
    assert h["request-id"], h
    ra = h["received-at"]
    assert ra.isdigit(), f"received-at is not a decimal: {ra!r}"
    assert t0 - 1000 <= int(ra) <= t1 + 1000, (
        f"received-at {ra} not within the request ({t0}..{t1} ms)")

    other = next(x for x in recs if x is not rec)
    assert other["headers"].get("webhook-id") == generated.encode(), (
        f"generated webhook id {generated!r} in the 202 differs from the "
        f"record header {other['headers'].get('webhook-id')!r}")
    assert other["headers"].get("request-id") != h["request-id"], (
        "two requests share a request-id")
    assert json.loads(other["value"])["conversation_id"] == \
        other["key"].decode()


def test_one_conversation_one_partition(pipeline, services):
    """Records are keyed by conversation: all of one conversation share a
    partition, in the order they were accepted."""
    pipeline.start_ingest()
    cids = [pipeline.cid(f"k{i}") for i in range(8)]
    sent = {c: [] for c in cids}
    for n in range(5):
        for c in cids:
            wid = f"{c}-{n}"
            r = pipeline.ingest.post(
                transcript(c, [(wid, "user", str(n))]),
                headers={"webhook-id": wid})
            _accepted(r, c, webhook_id=wid)
            sent[c].append(wid.encode())
    recs = services.topic_records(pipeline.topic)
    assert len(recs) == 40, len(recs)
    for c in cids:
        mine = sorted((x for x in recs if x["key"] == c.encode()),
                      key=lambda x: x["offset"])
        parts = {x["partition"] for x in mine}
        assert len(parts) == 1, f"{c} spread over partitions {parts}"
        assert [x["headers"]["webhook-id"] for x in mine] == sent[c], (
            f"{c}: records out of order")


PAYLOADS = Path(__file__).resolve().parent / "payloads"


def _payload(name, cid):
    body = json.loads((PAYLOADS / name).read_text(encoding="utf-8"))
    body["conversation_id"] = cid
    return body


def test_sample_payloads(pipeline):
    """A whole conversation as the vendor sends it (payloads/*.json), in
    its real order, and a seed-shaped transcript."""
    pipeline.start_worker()
    pipeline.start_ingest()
    cid = pipeline.cid("sample")
    order = ["replica_joined.json", "shutdown.json",
             "transcription_ready.json", "recording_ready.json"]
    for name in order:
        body = _payload(name, cid)
        et = body.get("event_type") or body.get("type")
        _accepted(pipeline.ingest.post(body), cid, et)
    entries = _payload("transcription_ready.json", cid)["properties"][
        "transcript"]
    rows = _wait_rows(pipeline, cid, len(entries))
    assert [r[:3] for r in rows] == [
        (i, e["role"], e["content"]) for i, e in enumerate(entries)], rows

    seed = pipeline.cid("sample-seed")
    body = _payload("transcription_ready_seed.json", seed)
    _accepted(pipeline.ingest.post(body), seed)
    entries = body["properties"]["transcript"]
    rows = _wait_rows(pipeline, seed, len(entries))
    assert rows == [(i, e["role"], e["content"], e["id"])
                    for i, e in enumerate(entries)], rows

    pipeline.wait_caught_up()
    _assert_conversation(pipeline, cid,
                         last_event_type="application.recording_ready")
    _assert_conversation(pipeline, seed)
