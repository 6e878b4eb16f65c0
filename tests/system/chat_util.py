# Helpers of the inbound-chat tests (docs/chat.md): webhook bodies in the
# shape of the WhatsApp Business Cloud API, an independent Meta signer
# (X-Hub-Signature-256), rows of chat_messages / chat_statuses / chat_turns,
# an agent that claims only this test's turns, a LISTEN connection, a
# phone-keyed lead-context stub and the worker's "chat:" log line.

import datetime as dt
import hashlib
import hmac
import json
import re
import threading
import time
import uuid

import psycopg

from harness import wait_until
from leadstub import LeadStub, _Handler, _Server

CHAT_SOURCE = "whatsapp"
WABA_ID = "102290129340398"


# ---------------------------------------------------------------- ids

def digits(n):
    """n random decimal digits (the first one not 0)."""
    s = ""
    while len(s) < n:
        s += str(uuid.uuid4().int)
    s = s[:n]
    return ("1" + s[1:]) if s[0] == "0" else s


def business_number():
    """A display_phone_number unique to the caller (15550 + 8 digits)."""
    return "15550" + digits(8)


def wa_id():
    """A sender's wa_id unique to the caller (12 digits)."""
    return digits(12)


def wamid():
    """A provider message id in Meta's style, unique."""
    return "wamid.HBgL" + uuid.uuid4().hex.upper()


def now_ts(offset=0):
    return int(time.time()) + offset


def ts_time(ts):
    """Meta's timestamp (epoch seconds, a string) as an aware datetime."""
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc)


# ---------------------------------------------------------------- bodies

def text_message(mid, sender, body, ts=None):
    return {"from": sender, "id": mid, "timestamp": str(ts or now_ts()),
            "type": "text", "text": {"body": body}}


def image_message(mid, sender, ts=None, caption="a photo", media_id=None):
    return {"from": sender, "id": mid, "timestamp": str(ts or now_ts()),
            "type": "image",
            "image": {"caption": caption,
                      "mime_type": "image/jpeg",
                      "sha256": hashlib.sha256(mid.encode()).hexdigest(),
                      "id": media_id or digits(16)}}


def status(mid, st, recipient, ts=None, conversation_id=None):
    s = {"id": mid, "status": st, "timestamp": str(ts or now_ts()),
         "recipient_id": recipient}
    if conversation_id:
        s["conversation"] = {"id": conversation_id,
                             "origin": {"type": "service"}}
        s["pricing"] = {"billable": True, "pricing_model": "CBP",
                        "category": "service"}
    return s


def change_value(business, messages=(), statuses=(), names=None,
                 phone_number_id="106540352242922"):
    """The `value` of one change: metadata, contacts (one per distinct
    sender of `messages`), messages, statuses."""
    names = names or {}
    v = {"messaging_product": "whatsapp",
         "metadata": {"display_phone_number": business,
                      "phone_number_id": phone_number_id}}
    senders = []
    for m in messages:
        if m.get("from") is not None and m["from"] not in senders:
            senders.append(m["from"])
    if senders:
        v["contacts"] = [{"profile": {"name": names.get(s, f"Person {s}")},
                          "wa_id": s} for s in senders]
    if messages:
        v["messages"] = list(messages)
    if statuses:
        v["statuses"] = list(statuses)
    return v


def webhook(business, messages=(), statuses=(), names=None, field="messages",
            value=None):
    """A whole webhook body with one entry holding one change."""
    if value is None:
        value = change_value(business, messages, statuses, names)
    return {"object": "whatsapp_business_account",
            "entry": [{"id": WABA_ID,
                       "changes": [{"field": field, "value": value}]}]}


def raw(body):
    """The exact bytes posted (and signed)."""
    if isinstance(body, bytes):
        return body
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def pretty(body):
    """A body as Meta might send it: indented, non-ASCII as \\u escapes
    (surrogate pairs for emoji) -- not what a re-serializer would write."""
    return json.dumps(body, indent=2, ensure_ascii=True).encode("ascii")


def meta_signature(secret, body):
    """X-Hub-Signature-256 value: sha256=<hex HMAC-SHA256(secret, body)>,
    computed here with Python's hmac, independently of the C code."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, raw(body), hashlib.sha256).hexdigest()


def post_chat(ingest, body, source=CHAT_SOURCE, secret=None, expect=202,
              headers=None, **kw):
    """POST a webhook (bytes or dict, sent as raw(body)); sign it when
    `secret` is given."""
    data = raw(body)
    h = dict(headers or {})
    if secret is not None:
        h["X-Hub-Signature-256"] = meta_signature(secret, data)
    r = ingest.post(data, source=source, headers=h, **kw)
    if expect is not None:
        assert r.status == expect, r
    return r


def chat_ingest(pipeline, source=CHAT_SOURCE, signature="none", **over):
    s = {f"source__{source}__kind": "chat",
         f"source__{source}__signature": signature}
    s.update(over)
    return pipeline.start_ingest(**s)


# ---------------------------------------------------------------- PostgreSQL

MSG_COLS = ("id", "provider_message_id", "business_number", "sender", "type",
            "text", "raw", "sent_at", "received_at", "inserted_at")
STATUS_COLS = ("provider_message_id", "status", "recipient_id", "status_at",
               "raw", "received_at")
TURN_COLS = ("id", "business_number", "sender", "lead_id", "lead_context",
             "status", "message_ids", "first_message_at", "last_message_at",
             "created_at", "claimed_at", "claimed_by", "answered_at")


def _dicts(cols, rows):
    return [dict(zip(cols, r)) for r in rows]


def messages_by_id(services, ids):
    """{provider_message_id: row} of the given ids."""
    rows = services.query(
        f"SELECT {', '.join(MSG_COLS)} FROM chat_messages"
        " WHERE provider_message_id = ANY(%s)", (list(ids),))
    return {r["provider_message_id"]: r for r in _dicts(MSG_COLS, rows)}


def messages_of(services, business, sender=None):
    """Rows of a business number (and sender), by id."""
    if sender is None:
        rows = services.query(
            f"SELECT {', '.join(MSG_COLS)} FROM chat_messages"
            " WHERE business_number = %s ORDER BY id", (business,))
    else:
        rows = services.query(
            f"SELECT {', '.join(MSG_COLS)} FROM chat_messages"
            " WHERE business_number = %s AND sender = %s ORDER BY id",
            (business, sender))
    return _dicts(MSG_COLS, rows)


def message_count(services, business):
    return services.scalar(
        "SELECT count(*) FROM chat_messages WHERE business_number = %s",
        (business,))


def statuses_of(services, ids):
    rows = services.query(
        f"SELECT {', '.join(STATUS_COLS)} FROM chat_statuses"
        " WHERE provider_message_id = ANY(%s)"
        " ORDER BY provider_message_id, status", (list(ids),))
    return _dicts(STATUS_COLS, rows)


def turns(services, business, sender=None):
    """Turns of a business number (and sender), by id."""
    if sender is None:
        rows = services.query(
            f"SELECT {', '.join(TURN_COLS)} FROM chat_turns"
            " WHERE business_number = %s ORDER BY id", (business,))
    else:
        rows = services.query(
            f"SELECT {', '.join(TURN_COLS)} FROM chat_turns"
            " WHERE business_number = %s AND sender = %s ORDER BY id",
            (business, sender))
    return _dicts(TURN_COLS, rows)


def turn_ids(services, business, sender):
    """[(status, message_ids)] of a conversation's turns, by id."""
    return [(t["status"], t["message_ids"])
            for t in turns(services, business, sender)]


def wait_turns(services, business, sender, want, timeout=30, worker=None):
    """Wait until the conversation's [(status, message_ids)] equals want."""
    def ok():
        if worker is not None:
            worker.assert_alive()
        return turn_ids(services, business, sender) == want
    wait_until(ok, timeout, 0.05,
               message=f"turns of {business}:{sender} to be {want}",
               describe=lambda: (
                   f"{turn_ids(services, business, sender)}" +
                   (f"; worker log tail:\n{worker.log_tail(15)}"
                    if worker is not None else "")))
    return turns(services, business, sender)


def wait_messages(services, ids, timeout=30, worker=None):
    ids = list(ids)

    def ok():
        if worker is not None:
            worker.assert_alive()
        return len(messages_by_id(services, ids)) == len(ids)
    wait_until(ok, timeout, 0.05,
               message=f"{len(ids)} chat_messages rows",
               describe=lambda: (
                   f"have {sorted(messages_by_id(services, ids))}" +
                   (f"; worker log tail:\n{worker.log_tail(15)}"
                    if worker is not None else "")))
    return messages_by_id(services, ids)


def add_phone_lead(services, lead_id, phone, name="Lead"):
    services.query(
        "INSERT INTO leads (id, workspace_id, name, phone) VALUES"
        " (%s, 'ws-test', %s, %s)", (lead_id, name, phone))
    return lead_id


# ---------------------------------------------------------------- the agent

class Agent:
    """An agent calling sluice_claim_turn / sluice_answer_turn as
    docs/chat.md shows.  The database is shared with other tests (and
    their left-over open turns), so while it claims it holds, in a second
    connection, row locks on every open turn of *other* business numbers:
    the function's FOR UPDATE SKIP LOCKED then skips them, and a claim sees
    only this test's turns.  The agent's own connection is sluice_agent's
    (it may claim, answer and read turns and messages, nothing else); the
    locker is the test's, as the owner (locking rows needs UPDATE)."""

    def __init__(self, services, business, name="a"):
        self.business = business
        self.name = name
        self.conn = psycopg.connect(services.agent_dsn, autocommit=True,
                                    connect_timeout=10)
        self.locker = psycopg.connect(services.pg_dsn, connect_timeout=10)

    def claim(self):
        """The claimed turn as a dict, or None."""
        with self.locker.transaction():
            self.locker.execute(
                "SELECT id FROM chat_turns WHERE status = 'open'"
                " AND business_number <> %s FOR UPDATE SKIP LOCKED",
                (self.business,))
            cur = self.conn.execute("SELECT * FROM sluice_claim_turn(%s)",
                                    (self.name,))
            row = cur.fetchone()
            cols = [d.name for d in cur.description]
        return dict(zip(cols, row)) if row else None

    def answer(self, turn_id):
        return self.conn.execute("SELECT sluice_answer_turn(%s)",
                                 (turn_id,)).fetchone()[0]

    def close(self):
        self.conn.close()
        self.locker.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Listener:
    """LISTEN sluice_turns on an autocommit connection; notifications
    kept with their arrival time (time.monotonic())."""

    def __init__(self, services):
        # An agent listens: as sluice_agent.
        self.conn = psycopg.connect(services.agent_dsn, autocommit=True,
                                    connect_timeout=10)
        self.conn.execute("LISTEN sluice_turns")
        self.seen = []              # (monotonic time, payload)

    def drain(self, timeout=0.1):
        """Collect what has arrived (waiting up to `timeout`)."""
        for n in self.conn.notifies(timeout=timeout):
            self.seen.append((time.monotonic(), n.payload))
        return self.seen

    def wait(self, payload, timeout=10.0):
        """The arrival time of the first notification carrying payload."""
        deadline = time.monotonic() + timeout
        while True:
            for t, p in self.seen:
                if p == payload:
                    return t
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no NOTIFY sluice_turns {payload!r} within "
                    f"{timeout} s; got {[p for _, p in self.seen][-20:]}")
            for n in self.conn.notifies(timeout=min(left, 0.5),
                                        stop_after=1):
                self.seen.append((time.monotonic(), n.payload))

    def payloads(self):
        return [p for _, p in self.seen]

    def close(self):
        self.conn.close()


# ---------------------------------------------------------------- a phone stub

class _PhoneHandler(_Handler):
    """GET /phones/{phone} (and /leads/{id}): the LeadStub's answers,
    keyed by the last path segment as decoded."""

    def do_GET(self):
        from urllib.parse import unquote
        stub = self.server.stub
        path = self.path.split("?", 1)[0]
        if not path.startswith(("/phones/", "/leads/")):
            self._send(404, b'{"error":"no such path"}')
            return
        seg = path.split("/", 2)[2]
        key = unquote(seg, errors="strict")
        st, body, delay = stub._begin(key, seg)
        try:
            if delay > 0:
                time.sleep(delay)
        finally:
            stub._end(key)
        self._send(st, body)


class PhoneStub(LeadStub):
    """A LeadStub serving GET /phones/{phone}; set(phone, ctx)."""

    def start(self):
        self._server = _Server(("127.0.0.1", 0), _PhoneHandler)
        self._server.stub = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="phonestub", daemon=True)
        self._thread.start()
        return self

    @property
    def phone_url(self):
        return f"http://127.0.0.1:{self.port}/phones/{{phone}}"

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/leads/{{lead_id}}"


# ---------------------------------------------------------------- the log

_CHAT_RX = re.compile(
    r"chat: (\d+) messages? \((\d+) new\), (\d+) status(?:es)?, "
    r"(\d+) turns? touched")


def chat_lines(text):
    """[(messages, new, statuses, turns)] of the worker's "chat:" lines."""
    return [tuple(int(x) for x in m.groups()) for m in _CHAT_RX.finditer(text)]


def chat_sums(text):
    lines = chat_lines(text)
    return tuple(sum(v[i] for v in lines) for i in range(4)) if lines \
        else None
