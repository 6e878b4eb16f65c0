# Inbound chat end to end (docs/chat.md): a message of an idle conversation
# becomes a claimable turn at once (NOTIFY), a busy conversation gathers
# what the person types into one open turn, webhooks with several people,
# statuses and other message types, re-delivered webhooks, the Meta
# signature and subscription handshake.

import http.client
import socket
import time
import uuid

import pytest

from chat_util import (CHAT_SOURCE, Agent, Listener, PhoneStub,
                       add_phone_lead, business_number, change_value,
                       chat_ingest, chat_lines, chat_sums, image_message,
                       messages_by_id, messages_of, meta_signature, post_chat,
                       pretty, raw, status, statuses_of, text_message,
                       turn_ids, turns, ts_time, wa_id, wait_turns, wamid,
                       webhook)
from harness import wait_until


def _db_now(services):
    return services.scalar("SELECT now()")


def _recent(services, t, within=120):
    return t is not None and abs((_db_now(services) - t).total_seconds()) \
        < within


@pytest.fixture
def phonestub():
    stub = PhoneStub().start()
    yield stub
    stub.stop()


# ---------------------------------------------------------------- 1. idle

def test_idle_message_is_claimable_at_once(pipeline, services):
    biz = business_number()
    known, unknown, gone = wa_id(), wa_id(), wa_id()
    lead = add_phone_lead(services, f"{pipeline.prefix}lead", "+" + known,
                          "Ana")
    add_phone_lead(services, f"{pipeline.prefix}gone", "+" + gone, "Gone")
    services.query("UPDATE leads SET deleted_at = now() WHERE id = %s",
                   (f"{pipeline.prefix}gone",))
    worker = pipeline.start_worker()
    ingest = chat_ingest(pipeline)
    listener = Listener(services)
    agent = Agent(services, biz)
    try:
        # -- A person with a lead writes once.
        m1, ts1 = wamid(), time.time_ns() // 10**9
        msg1 = text_message(m1, known, "Hi, is the offer still on?", ts1)
        r = post_chat(ingest, webhook(biz, [msg1]))
        t_ack = time.monotonic()
        assert r.json is not None and r.json.get("status") == "accepted", r
        assert r.json.get("records") == 1, r
        assert r.json.get("senders") == [known], r

        t_notify = listener.wait(f"{biz}:{known}", timeout=15)
        latency = t_notify - t_ack
        # NOTIFY comes after the commit: the turn is there already.
        got = turns(services, biz, known)
        assert [(t["status"], t["message_ids"]) for t in got] == \
            [("open", [m1])], got
        assert latency < 5.0, f"202 -> NOTIFY took {latency:.2f} s"
        print(f"202 -> NOTIFY: {latency * 1000:.0f} ms")

        row = messages_by_id(services, [m1])[m1]
        assert (row["business_number"], row["sender"], row["type"],
                row["text"]) == (biz, known, "text",
                                 "Hi, is the offer still on?"), row
        assert row["raw"] == msg1, row["raw"]
        assert row["sent_at"] == ts_time(ts1), (row["sent_at"], ts1)
        assert _recent(services, row["received_at"]), row["received_at"]

        t1 = got[0]
        assert t1["lead_id"] == lead, t1
        ctx = t1["lead_context"]
        assert isinstance(ctx, dict) and ctx.get("lead", {}).get("id") == \
            lead, ctx
        assert ctx["lead"].get("phone") == "+" + known, ctx
        assert "".join(c for c in ctx["lead"]["phone"] if c.isdigit()) == \
            known
        assert t1["first_message_at"] == t1["last_message_at"] == \
            ts_time(ts1), t1

        # -- The agent claims it, and only it.
        c = agent.claim()
        assert c is not None, "sluice_claim_turn returned no row"
        assert (c["id"], c["status"], c["claimed_by"], c["message_ids"],
                c["lead_id"]) == (t1["id"], "claimed", "a", [m1], lead), c
        assert c["claimed_at"] is not None
        assert agent.claim() is None, "a second claim returned a turn"

        # -- Someone the CRM does not know.
        m2, ts2 = wamid(), ts1 + 1
        msg2 = text_message(m2, unknown, "who is this?", ts2)
        post_chat(ingest, webhook(biz, [msg2]))
        listener.wait(f"{biz}:{unknown}", timeout=15)
        got2 = turns(services, biz, unknown)
        assert [(t["status"], t["message_ids"]) for t in got2] == \
            [("open", [m2])], got2
        assert got2[0]["lead_id"] is None, got2[0]
        assert got2[0]["lead_context"] is None, got2[0]
        c2 = agent.claim()
        assert c2 is not None and c2["id"] == got2[0]["id"], c2

        # A person whose lead was deleted has no lead either.
        m3 = wamid()
        post_chat(ingest, webhook(biz, [text_message(m3, gone, "me again")]))
        got3 = wait_turns(services, biz, gone, [("open", [m3])],
                          worker=worker)
        assert (got3[0]["lead_id"], got3[0]["lead_context"]) == \
            (None, None), got3[0]
        c3 = agent.claim()
        assert c3 is not None and c3["id"] == got3[0]["id"], c3
        assert agent.answer(c3["id"]) is True

        assert agent.answer(t1["id"]) is True
        assert agent.answer(t1["id"]) is False, "answered twice"
        assert agent.answer(c2["id"]) is True
        final = {t["id"]: t for t in turns(services, biz)}
        assert {k: v["status"] for k, v in final.items()} == \
            {t1["id"]: "answered", c2["id"]: "answered",
             c3["id"]: "answered"}, final
        assert all(v["answered_at"] is not None for v in final.values())
        assert agent.claim() is None
        pipeline.wait_caught_up()
        listener.drain()
        assert set(listener.payloads()) >= {f"{biz}:{known}",
                                            f"{biz}:{unknown}"}
    finally:
        agent.close()
        listener.close()
    worker.assert_alive()


def test_lead_by_phone_over_http(pipeline, services, phonestub):
    """lead_context.source = http: GET phone_url with {phone}; 404 is no
    lead; a second turn of the same person reads the Redis cache."""
    biz = business_number()
    known, unknown = wa_id(), wa_id()
    lead = f"{pipeline.prefix}hlead"
    ctx = {"lead": {"id": lead, "name": "Http Ana", "phone": "+" + known}}
    phonestub.set(known, ctx)
    phonestub.set("+" + known, ctx)
    worker = pipeline.start_worker(lead_context__source="http",
                                   lead_context__url=phonestub.url,
                                   lead_context__phone_url=phonestub.phone_url,
                                   redis_timeout_ms=300)
    ingest = chat_ingest(pipeline)
    with Agent(services, biz) as agent:
        m1, m2, m3 = wamid(), wamid(), wamid()
        post_chat(ingest, webhook(biz, [text_message(m1, known, "one")]))
        post_chat(ingest, webhook(biz, [text_message(m2, unknown, "two")]))
        t1 = wait_turns(services, biz, known, [("open", [m1])],
                        worker=worker)[0]
        t2 = wait_turns(services, biz, unknown, [("open", [m2])],
                        worker=worker)[0]
        assert t1["lead_context"] == ctx, t1
        assert t1["lead_id"] == lead, t1
        assert (t2["lead_id"], t2["lead_context"]) == (None, None), t2
        # {phone} is the digits (docs/configuration.md).
        assert sorted(phonestub.raw_paths) == sorted([known, unknown]), \
            phonestub.raw_paths
        calls = phonestub.calls_for(known) + phonestub.calls_for("+" + known)
        assert calls == 1, phonestub.snapshot()

        # The first turn is claimed: m3 opens another, whose context comes
        # from the cache.
        claimed = []
        while (c := agent.claim()) is not None:
            claimed.append(c["id"])
        assert sorted(claimed) == sorted([t1["id"], t2["id"]]), claimed
        post_chat(ingest, webhook(biz, [text_message(m3, known, "three")]))
        got = wait_turns(services, biz, known,
                         [("claimed", [m1]), ("open", [m3])], worker=worker)
        assert (got[1]["lead_id"], got[1]["lead_context"]) == (lead, ctx), \
            got[1]
        calls = phonestub.calls_for(known) + phonestub.calls_for("+" + known)
        assert calls == 1, ("the phone was looked up again although its "
                            f"context is cached: {phonestub.snapshot()}")


# ---------------------------------------------------------------- 2. busy

def test_busy_conversation_gathers_one_turn(pipeline, services):
    biz = business_number()
    who = wa_id()
    conv = f"{biz}:{who}"
    worker = pipeline.start_worker()
    ingest = chat_ingest(pipeline)
    listener = Listener(services)
    agent = Agent(services, biz)
    try:
        ts = time.time_ns() // 10**9
        ids = [wamid() for _ in range(6)]
        sent = {}

        def say(i, text):
            m = text_message(ids[i], who, text, ts + i)
            sent[ids[i]] = m
            post_chat(ingest, webhook(biz, [m]))

        say(0, "hello")
        t1 = wait_turns(services, biz, who, [("open", [ids[0]])],
                        worker=worker)[0]
        c1 = agent.claim()
        assert c1 is not None and c1["id"] == t1["id"], c1

        # The agent is busy: three webhooks, each in a batch of its own
        # (the next is sent when the previous is in the table).
        say(1, "are you there?")
        wait_turns(services, biz, who,
                   [("claimed", [ids[0]]), ("open", [ids[1]])],
                   worker=worker)
        say(2, "I wanted to ask")
        wait_turns(services, biz, who,
                   [("claimed", [ids[0]]), ("open", ids[1:3])],
                   worker=worker)
        assert agent.claim() is None, \
            "a turn of a conversation with a claimed turn was claimed"
        say(3, "about the price")
        got = wait_turns(services, biz, who,
                         [("claimed", [ids[0]]), ("open", ids[1:4])],
                         worker=worker)
        pipeline.wait_caught_up()
        open_turn = got[1]
        assert open_turn["first_message_at"] == ts_time(ts + 1), open_turn
        assert open_turn["last_message_at"] == ts_time(ts + 3), open_turn
        assert agent.claim() is None, \
            "a turn of a conversation with a claimed turn was claimed"
        # Four batches, one new message each.
        wait_until(lambda: sum(x[1] for x in chat_lines(worker.log_text()))
                   == 4, 10, 0.1,
                   message="'chat:' log lines counting 4 new messages",
                   describe=lambda: chat_lines(worker.log_text()))
        assert len(chat_lines(worker.log_text())) >= 4

        # Every batch that added to the open turn woke the agent.
        listener.drain(0.5)
        n = listener.payloads().count(conv)
        assert n >= 4, f"{n} notifications for {conv}, 4 commits added " \
                       f"to its open turn: {listener.payloads()}"

        # The agent answers: the gathered turn is claimable, all three.
        assert agent.answer(c1["id"]) is True
        c2 = agent.claim()
        assert c2 is not None and c2["id"] == open_turn["id"], c2
        assert c2["message_ids"] == ids[1:4], c2
        assert agent.claim() is None

        # Busy again: the next message opens a third turn.
        say(4, "hello??")
        say(5, "ok")
        wait_turns(services, biz, who,
                   [("answered", [ids[0]]), ("claimed", ids[1:4]),
                    ("open", ids[4:6])], worker=worker)
        assert agent.claim() is None
        assert agent.answer(c2["id"]) is True
        c3 = agent.claim()
        assert c3 is not None and c3["message_ids"] == ids[4:6], c3
        rows = messages_by_id(services, ids)
        assert {m: (r["sender"], r["text"]) for m, r in rows.items()} == \
            {m: (who, sent[m]["text"]["body"]) for m in ids}
    finally:
        agent.close()
        listener.close()


# ---------------------------------------------------------------- 3. senders

def test_several_senders_statuses_and_other_types(pipeline, services):
    biz = business_number()
    a, b, c = wa_id(), wa_id(), wa_id()
    worker = pipeline.start_worker()
    ingest = chat_ingest(pipeline)
    ts = time.time_ns() // 10**9
    a1, b1, a2 = wamid(), wamid(), wamid()
    msgs = [text_message(a1, a, "A says one", ts),
            text_message(b1, b, "B says one", ts + 1),
            text_message(a2, a, 'olá 😀 "two"\n\tend', ts + 2)]
    # As Meta sends it: indented, \u escapes; the records hold these bytes.
    body = pretty(webhook(biz, msgs, names={a: "Ana", b: "Bea"}))
    assert b"\\ud83d\\ude00" in body
    listener = Listener(services)
    r = post_chat(ingest, body)
    assert r.json is not None and r.json.get("records") == 2, r
    assert sorted(r.json.get("senders") or []) == sorted([a, b]), r

    recs = services.topic_records(pipeline.topic)
    assert len(recs) == 2, [(x["key"], x["headers"]) for x in recs]
    by_key = {x["key"].decode(): x for x in recs}
    assert set(by_key) == {a, b}, list(by_key)
    for k, x in by_key.items():
        assert x["headers"].get("chat-sender") == k.encode(), x["headers"]
        assert x["value"] == body, "a record does not hold the body as " \
                                   "received"

    wait_turns(services, biz, a, [("open", [a1, a2])], worker=worker)
    wait_turns(services, biz, b, [("open", [b1])], worker=worker)
    listener.wait(f"{biz}:{a}")
    listener.wait(f"{biz}:{b}")
    listener.close()
    rows = messages_by_id(services, [a1, b1, a2])
    assert {m: (r["sender"], r["text"], r["raw"]) for m, r in rows.items()} \
        == {m["id"]: (m["from"], m["text"]["body"], m) for m in msgs}, rows

    # -- Statuses only (of messages the business sent to c): no message,
    #    no turn.
    out = "wamid.OUT" + uuid.uuid4().hex.upper()
    sts = [status(out, "sent", c, ts + 3, conversation_id=uuid.uuid4().hex),
           status(out, "delivered", c, ts + 4)]
    n0 = services.topic_count(pipeline.topic)
    r = post_chat(ingest, webhook(biz, statuses=sts))
    assert r.json is not None and r.json.get("records") == 1, r
    assert r.json.get("senders") == [c], r
    recs = services.topic_records(pipeline.topic)
    assert len(recs) == n0 + 1
    st_rec = [x for x in recs if x["key"] == c.encode()]
    assert len(st_rec) == 1 and \
        st_rec[0]["headers"].get("chat-sender") == c.encode(), st_rec
    assert st_rec[0]["value"] == raw(webhook(biz, statuses=sts))

    def two_statuses():
        worker.assert_alive()
        return len(statuses_of(services, [out])) == 2
    wait_until(two_statuses, 30, 0.05, message=f"2 chat_statuses of {out}",
               describe=lambda: statuses_of(services, [out]))
    got = {s["status"]: s for s in statuses_of(services, [out])}
    assert set(got) == {"sent", "delivered"}, got
    for s in sts:
        g = got[s["status"]]
        assert g["recipient_id"] == c, g
        assert g["status_at"] == ts_time(s["timestamp"]), g
        assert g["raw"] == s, g["raw"]
        assert _recent(services, g["received_at"]), g
    pipeline.wait_caught_up()
    assert messages_of(services, biz, c) == [], "a status became a message"
    assert messages_by_id(services, [out]) == {}
    assert turns(services, biz, c) == [], "a status opened a turn"

    # -- An image: type image, no text, the raw JSON; it joins A's turn.
    i1 = wamid()
    img = image_message(i1, a, ts + 5, caption="the car")
    post_chat(ingest, webhook(biz, [img]))
    wait_turns(services, biz, a, [("open", [a1, a2, i1])], worker=worker)
    row = messages_by_id(services, [i1])[i1]
    assert (row["type"], row["text"], row["sender"]) == ("image", None, a), \
        row
    assert row["raw"] == img, row["raw"]
    assert row["sent_at"] == ts_time(ts + 5)

    # -- A change of another field: acknowledged, nothing published.
    n0 = services.topic_count(pipeline.topic)
    other = webhook(biz, field="account_update",
                    value={"phone_number": biz, "event": "VERIFIED_ACCOUNT"})
    r = post_chat(ingest, other)
    assert r.json is not None and r.json.get("records") == 0, r
    assert r.json.get("senders") == [], r
    time.sleep(0.3)
    assert services.topic_count(pipeline.topic) == n0, \
        "a webhook without messages or statuses was published"
    pipeline.wait_caught_up()
    assert len(messages_of(services, biz)) == 4


# ---------------------------------------------------------------- 4. again

def _wait_sums(worker, want):
    """(messages, new) summed over the worker's "chat:" lines reach want
    (a line is logged right after its commit)."""
    def ok():
        s = chat_sums(worker.log_text())
        return s is not None and s[:2] == want
    wait_until(ok, 10, 0.1,
               message=f"'chat: N messages (M new), ...' lines summing to "
                       f"(N, M) = {want}",
               describe=lambda: f"{chat_lines(worker.log_text())}; log "
                                f"tail:\n{worker.log_tail(10)}")


def test_redelivered_webhook_adds_nothing(pipeline, services):
    biz = business_number()
    who = wa_id()
    worker = pipeline.start_worker()
    ingest = chat_ingest(pipeline)
    ts = time.time_ns() // 10**9
    m1, m2 = wamid(), wamid()
    out = "wamid.OUT" + uuid.uuid4().hex.upper()
    body = raw(webhook(biz, [text_message(m1, who, "first", ts),
                             text_message(m2, who, "second", ts + 1)],
                       [status(out, "read", who, ts + 2)]))
    for _ in range(3):
        r = post_chat(ingest, body)
        assert r.json is not None and r.json.get("records") == 1, r
    assert services.topic_count(pipeline.topic) == 3
    pipeline.wait_caught_up()
    assert turn_ids(services, biz, who) == [("open", [m1, m2])], \
        turns(services, biz, who)
    assert services.scalar(
        "SELECT count(*) FROM chat_messages WHERE provider_message_id ="
        " ANY(%s)", ([m1, m2],)) == 2
    assert len(statuses_of(services, [out])) == 1
    first = {m: r["inserted_at"] for m, r in
             messages_by_id(services, [m1, m2]).items()}
    _wait_sums(worker, (6, 2))

    # Re-delivered after the agent claimed the turn: still nothing new,
    # no new turn holding old messages.
    with Agent(services, biz) as agent:
        c = agent.claim()
        assert c is not None and c["message_ids"] == [m1, m2], c
        post_chat(ingest, body)
        pipeline.wait_caught_up()
        assert turn_ids(services, biz, who) == [("claimed", [m1, m2])], \
            turns(services, biz, who)

        # Re-delivered beside a new message: only the new one opens a turn.
        m3 = wamid()
        body2 = raw(webhook(biz, [text_message(m2, who, "second", ts + 1),
                                  text_message(m3, who, "third", ts + 3)]))
        post_chat(ingest, body2)
        post_chat(ingest, body2)
        wait_turns(services, biz, who,
                   [("claimed", [m1, m2]), ("open", [m3])], worker=worker)
        pipeline.wait_caught_up()
        assert turn_ids(services, biz, who) == \
            [("claimed", [m1, m2]), ("open", [m3])]
        assert agent.claim() is None
    again = {m: r["inserted_at"] for m, r in
             messages_by_id(services, [m1, m2]).items()}
    assert again == first, "re-delivery rewrote stored messages"
    _wait_sums(worker, (12, 3))


# ---------------------------------------------------------------- 5. meta

def test_meta_signature_handshake_and_success_status(pipeline, services):
    secret = uuid.uuid4().hex           # an app secret as Meta shows it
    token = "tok-" + uuid.uuid4().hex[:12]
    ingest = chat_ingest(
        pipeline, signature="meta", **{
            f"source__{CHAT_SOURCE}__secret": secret,
            f"source__{CHAT_SOURCE}__verify_token": token,
            "source__wa200__kind": "chat",
            "source__wa200__signature": "none",
            "source__wa200__success_status": 200,
            "source__wa204__kind": "chat",
            "source__wa204__signature": "none",
            "source__wa204__success_status": 204})
    biz = business_number()
    who = wa_id()
    body = pretty(webhook(biz, [text_message(wamid(), who,
                                             "hello signed, ça va")]))
    assert b"hello signed" in body and b"\\u00e7" in body

    r = post_chat(ingest, body, secret=secret, expect=None)
    assert r.status == 202, r
    assert r.json is not None and r.json.get("records") == 1, r
    assert services.topic_count(pipeline.topic) == 1

    good = meta_signature(secret, body)
    tampered = body.replace(b"hello signed", b"hello signeD")
    assert tampered != body
    bad = {
        "tampered body": (tampered, {"X-Hub-Signature-256": good}),
        "no signature": (body, {}),
        "wrong secret": (body, {"X-Hub-Signature-256":
                                meta_signature(secret + "x", body)}),
        "signature of an empty secret": (
            body, {"X-Hub-Signature-256": meta_signature("", body)}),
        "truncated": (body, {"X-Hub-Signature-256": good[:-2]}),
        "no sha256= prefix": (body, {"X-Hub-Signature-256":
                                     good.removeprefix("sha256=")}),
        "empty header": (body, {"X-Hub-Signature-256": ""}),
        "sha1 only": (body, {"X-Hub-Signature": "sha1=" + "0" * 40}),
    }
    for what, (data, headers) in bad.items():
        r = ingest.post(data, source=CHAT_SOURCE, headers=headers)
        assert r.status == 401, f"{what}: {r}"
    assert services.topic_count(pipeline.topic) == 1, \
        "a request with a bad signature was published"

    # The subscription handshake.
    path = f"/v1/webhooks/{CHAT_SOURCE}"
    r = ingest.request(
        "GET", f"{path}?hub.mode=subscribe&hub.verify_token={token}"
               "&hub.challenge=12345")
    assert r.status == 200, r
    assert r.body == b"12345", r
    assert r.headers.get("content-type", "").startswith("text/plain"), \
        r.headers
    r = ingest.request(
        "GET", f"{path}?hub.mode=subscribe&hub.verify_token={token}x"
               "&hub.challenge=12345")
    assert r.status == 403, r
    assert b"12345" not in r.body, r
    r = ingest.request(
        "GET", f"{path}?hub.mode=subscribe&hub.challenge=12345")
    assert r.status == 403, f"no token: {r}"
    r = ingest.request(
        "GET", "/v1/webhooks/wa200?hub.mode=subscribe&hub.verify_token="
               "&hub.challenge=777")
    assert r.status == 403, f"a source without verify_token: {r}"

    # success_status = 200 (what Meta wants).
    who2 = wa_id()
    r = post_chat(ingest, webhook(biz, [text_message(wamid(), who2, "x")]),
                  source="wa200", expect=None)
    assert r.status == 200, r
    assert r.json is not None and {k: r.json.get(k) for k in (
        "status", "records", "senders")} == {"status": "accepted",
                                             "records": 1,
                                             "senders": [who2]}, r
    assert services.topic_count(pipeline.topic) == 2
    r = post_chat(ingest, webhook(biz, [text_message(wamid(), who2, "y")]),
                  source="wa204", expect=None)
    assert (r.status, r.body) == (204, b""), r
    assert services.topic_count(pipeline.topic) == 3
    # On the wire: "No Content", and nothing that describes a body (RFC
    # 9110 15.3.5), read byte for byte up to the server's close.
    data = raw(webhook(biz, [text_message(wamid(), who2, "z")]))
    with socket.create_connection(("127.0.0.1", ingest.port),
                                  timeout=10) as sock:
        sock.sendall(b"POST /v1/webhooks/wa204 HTTP/1.1\r\n"
                     b"Host: x\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\n"
                     + f"Content-Length: {len(data)}\r\n\r\n".encode()
                     + data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0] == "HTTP/1.1 204 No Content", answer
    names = {ln.split(":", 1)[0].strip().lower() for ln in lines[1:]}
    assert not names & {"content-type", "content-length",
                        "transfer-encoding"}, answer
    assert rest == b"", answer
    assert services.topic_count(pipeline.topic) == 4
    # A kept-alive connection goes on after a 204 without a body to skip.
    conn = http.client.HTTPConnection("127.0.0.1", ingest.port, timeout=10)
    try:
        for text in ("k1", "k2"):
            conn.request("POST", "/v1/webhooks/wa204", body=raw(webhook(
                biz, [text_message(wamid(), who2, text)])),
                headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert (resp.status, resp.reason, resp.read()) == \
                (204, "No Content", b"")
    finally:
        conn.close()
    assert services.topic_count(pipeline.topic) == 6
    # The signed record holds the body as received, byte for byte.
    signed = [x for x in services.topic_records(pipeline.topic)
              if x["key"] == who.encode()]
    assert len(signed) == 1 and signed[0]["value"] == body, signed


# ---------------------------------------------------------------- more

def test_duplicates_inside_one_batch(pipeline, services):
    """The same webhook three times in one batch, and a message listed
    twice in one webhook: one row, one place in one turn."""
    biz = business_number()
    who = wa_id()
    ingest = chat_ingest(pipeline)
    ts = time.time_ns() // 10**9
    m1, m2, m3 = wamid(), wamid(), wamid()
    body = raw(webhook(biz, [text_message(m1, who, "one", ts),
                             text_message(m2, who, "two", ts + 1)]))
    for _ in range(3):
        post_chat(ingest, body)
    post_chat(ingest, webhook(biz, [text_message(m3, who, "three", ts + 2),
                                    text_message(m3, who, "three", ts + 2)]))
    # The four records wait in Kafka before the worker starts, so its first
    # fetch takes them together however slowly they were acknowledged.
    worker = pipeline.start_worker(batch_wait_ms=1500)
    pipeline.wait_caught_up()
    assert turn_ids(services, biz, who) == [("open", [m1, m2, m3])], \
        turns(services, biz, who)
    assert len(messages_by_id(services, [m1, m2, m3])) == 3
    wait_until(lambda: sum(x[1] for x in chat_lines(worker.log_text()))
               == 3, 10, 0.1, message="'chat:' lines counting 3 new",
               describe=lambda: chat_lines(worker.log_text()))
    lines = chat_lines(worker.log_text())
    # The point of the test: the duplicates met inside one batch.
    assert lines[0][0] >= 6, (
        "the three copies were not in one batch; the test did not test "
        f"what it means to: {lines}")


def test_one_webhook_several_entries(pipeline, services):
    """Meta may batch several entries and changes in one webhook: one
    person writing to two business numbers is one record and two
    conversations, each in the order listed."""
    biz1, biz2 = business_number(), business_number()
    who, other = wa_id(), wa_id()
    worker = pipeline.start_worker()
    ingest = chat_ingest(pipeline)
    ts = time.time_ns() // 10**9
    s1, s2, s3, o1 = wamid(), wamid(), wamid(), wamid()

    body = {"object": "whatsapp_business_account", "entry": [
        {"id": "111", "changes": [
            {"field": "messages", "value": change_value(
                biz1, [text_message(s1, who, "to one", ts)])}]},
        {"id": "222", "changes": [
            {"field": "messages", "value": change_value(
                biz2, [text_message(s2, who, "to two", ts + 1),
                       text_message(o1, other, "other to two", ts + 1)])},
            {"field": "messages", "value": change_value(
                biz1, [text_message(s3, who, "to one again", ts + 2)])}]}]}
    listener = Listener(services)
    try:
        r = post_chat(ingest, body)
        assert r.json is not None and r.json.get("records") == 2, r
        assert sorted(r.json.get("senders") or []) == sorted([who, other])
        keys = sorted(x["key"] for x in
                      services.topic_records(pipeline.topic))
        assert keys == sorted([who.encode(), other.encode()]), keys
        wait_turns(services, biz1, who, [("open", [s1, s3])], worker=worker)
        wait_turns(services, biz2, who, [("open", [s2])], worker=worker)
        wait_turns(services, biz2, other, [("open", [o1])], worker=worker)
        rows = messages_by_id(services, [s1, s2, s3, o1])
        assert {m: r["business_number"] for m, r in rows.items()} == \
            {s1: biz1, s2: biz2, s3: biz1, o1: biz2}, rows
        for p in (f"{biz1}:{who}", f"{biz2}:{who}", f"{biz2}:{other}"):
            listener.wait(p)
    finally:
        listener.close()


def _check_config(tmp_path, name, settings):
    import subprocess
    from harness import BUILD_DIR, _format_config
    cfg = tmp_path / name
    cfg.write_text(_format_config(settings))
    r = subprocess.run([str(BUILD_DIR / "sluice-ingest"), "-c", str(cfg),
                        "--check-config"], capture_output=True, text=True,
                       timeout=30)
    return r.returncode, r.stdout + r.stderr


def test_chat_source_configuration(pipeline, tmp_path):
    base = pipeline.ingest_settings()
    secret = "s" + uuid.uuid4().hex
    ok = dict(base, **{"source.w.kind": "chat", "source.w.signature": "meta",
                       "source.w.secret": secret,
                       "source.w.verify_token": "tok",
                       "source.w.success_status": 200})
    rc, out = _check_config(tmp_path, "ok.conf", ok)
    assert rc == 0, out
    assert secret not in out and "tok\n" not in out, \
        f"--check-config printed a secret:\n{out}"
    bad = {
        "meta without a secret": {"source.w.secret": None},
        "success_status 201": {"source.w.success_status": 201},
        "success_status 500": {"source.w.success_status": 500},
        "success_status text": {"source.w.success_status": "ok"},
        "unknown signature": {"source.w.signature": "hmac"},
    }
    for what, over in bad.items():
        rc, out = _check_config(tmp_path, "bad.conf", dict(ok, **over))
        assert rc != 0, f"{what} was accepted:\n{out}"
    # secret_file works for meta.
    f = tmp_path / "app_secret"
    f.write_text(secret)
    f.chmod(0o600)
    rc, out = _check_config(tmp_path, "file.conf", dict(
        ok, **{"source.w.secret": None, "source.w.secret_file": str(f)}))
    assert rc == 0, out


def test_lead_update_naming_the_phone_drops_its_context(pipeline, services):
    """A person's context is cached by phone; a lead update that names the
    phone drops it, so the next turn reads the lead as it is now."""
    biz = business_number()
    who = wa_id()
    lead = add_phone_lead(services, f"{pipeline.prefix}lead", "+" + who,
                          "Before")
    worker = pipeline.start_worker()
    ingest = chat_ingest(pipeline, **{"source__leadupd__kind": "lead_updated",
                                      "source__leadupd__signature": "none"})
    ids = [wamid() for _ in range(3)]

    def name_in_new_turn(i, want_turns):
        post_chat(ingest, webhook(biz, [text_message(ids[i], who, f"m{i}")]))
        got = wait_turns(services, biz, who, want_turns, worker=worker)
        return got[-1]["lead_id"], \
            (got[-1]["lead_context"] or {}).get("lead", {}).get("name")

    def done(agent):
        c = agent.claim()
        assert c is not None and agent.answer(c["id"]) is True, c

    with Agent(services, biz) as agent:
        assert name_in_new_turn(0, [("open", ids[:1])]) == (lead, "Before")
        done(agent)

        services.query("UPDATE leads SET name = 'After', updated_at = now()"
                       " WHERE id = %s", (lead,))
        # Cache-aside: without an update naming it, the cached context.
        assert name_in_new_turn(
            1, [("answered", ids[:1]), ("open", ids[1:2])]) == \
            (lead, "Before"), "the context by phone was not cached"
        done(agent)

        r = ingest.post({"lead_id": lead, "phone": "+" + who},
                        source="leadupd")
        assert r.status == 202, r
        pipeline.wait_caught_up()
        assert name_in_new_turn(
            2, [("answered", ids[:1]), ("answered", ids[1:2]),
                ("open", ids[2:3])]) == (lead, "After"), \
            "a lead update naming the phone left the old context cached"


def test_unknown_sender_is_cached_until_a_lead_update_names_it(
        pipeline, services, phonestub):
    """A phone the source does not know is cached as unknown
    (lead_context.not_found_ttl_s), so the person's next turns ask nobody;
    a lead update naming the phone drops it, and the next turn carries the
    lead the source knows by then."""
    biz = business_number()
    who = wa_id()
    lead = f"{pipeline.prefix}newlead"
    ctx = {"lead": {"id": lead, "name": "New", "phone": "+" + who}}
    worker = pipeline.start_worker(lead_context__source="http",
                                   lead_context__url=phonestub.url,
                                   lead_context__phone_url=phonestub.phone_url)
    ingest = chat_ingest(pipeline, **{"source__leadupd__kind": "lead_updated",
                                      "source__leadupd__signature": "none"})
    ids = [wamid() for _ in range(3)]

    def lead_of_new_turn(i):
        post_chat(ingest, webhook(biz, [text_message(ids[i], who, f"m{i}")]))
        want = [("answered", [m]) for m in ids[:i]] + [("open", [ids[i]])]
        got = wait_turns(services, biz, who, want, worker=worker)[-1]
        return got["lead_id"], got["lead_context"]

    with Agent(services, biz) as agent:
        def done():
            c = agent.claim()
            assert c is not None and agent.answer(c["id"]) is True, c

        assert lead_of_new_turn(0) == (None, None)
        assert phonestub.calls_for(who) == 1, phonestub.snapshot()
        done()
        # The CRM learns the person, but says so to nobody: the cached
        # "unknown" stands and the source is not asked again.
        phonestub.set(who, ctx)
        assert lead_of_new_turn(1) == (None, None)
        assert phonestub.calls_for(who) == 1, \
            f"an unknown phone was asked again: {phonestub.snapshot()}"
        ttl = services.redis().pttl(f"lead_phone_ctx:{who}")
        assert 0 < ttl <= 30000, ttl
        done()

        r = ingest.post({"lead_id": lead, "phone": "+" + who},
                        source="leadupd")
        assert r.status == 202, r
        pipeline.wait_caught_up()
        assert lead_of_new_turn(2) == (lead, ctx)
        assert phonestub.calls_for(who) == 2, phonestub.snapshot()


def test_unknown_sender_not_cached_with_ttl_0(pipeline, services, phonestub):
    """lead_context.not_found_ttl_s = 0: an unknown phone is asked of the
    source again for each of the person's turns."""
    biz = business_number()
    who = wa_id()
    worker = pipeline.start_worker(lead_context__source="http",
                                   lead_context__url=phonestub.url,
                                   lead_context__phone_url=phonestub.phone_url,
                                   lead_context__not_found_ttl_s=0)
    ingest = chat_ingest(pipeline)
    ids = [wamid(), wamid()]
    with Agent(services, biz) as agent:
        post_chat(ingest, webhook(biz, [text_message(ids[0], who, "one")]))
        wait_turns(services, biz, who, [("open", ids[:1])], worker=worker)
        c = agent.claim()
        assert c is not None and agent.answer(c["id"]) is True, c
        post_chat(ingest, webhook(biz, [text_message(ids[1], who, "two")]))
        wait_turns(services, biz, who,
                   [("answered", ids[:1]), ("open", ids[1:])], worker=worker)
    assert phonestub.calls_for(who) == 2, phonestub.snapshot()
    assert services.redis().get(f"lead_phone_ctx:{who}") is None
