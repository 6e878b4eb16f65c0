# The whole pipeline on the secure stack of docs/security.md at once: the
# SASL_SSL broker with its ACLs (sluice-ingest as sluice_ingest,
# sluice-worker as sluice_worker), the TLS-only PostgreSQL (verify-full;
# the worker writes as sluice_worker and looks leads up as sluice_lookup,
# the agent claims as sluice_agent), the TLS-only Redis as the doc's ACL
# user through stunnel4, and sluice-ingest speaking HTTPS only. The same
# posts -- a Standard-Webhooks-signed transcript, a campaign batch whose
# lead contexts come from PostgreSQL, a Meta-signed WhatsApp message an
# agent claims and answers -- go to the plaintext stack of the rest of the
# suite, and both end states, compared by natural key without generated
# ids and timestamps, must be the same.

import base64
import datetime as dt
import json
import os
import socket
import subprocess
import uuid

import pytest
from standardwebhooks.webhooks import Webhook

from campaign_util import (add_inbox, add_lead, batch, campaign_ingest, msg,
                           post_batch, wait_run, when)
from chat_util import (CHAT_SOURCE, Agent, Listener, add_phone_lead,
                       business_number, post_chat, text_message, wa_id,
                       wait_turns, wamid, webhook)
from harness import (PG_AGENT, PG_LOOKUP, PG_WORKER, Pipeline, Services,
                     _read_env_file, free_port, populate_keys, transcript,
                     wait_until)
from secure_util import (STUNNEL, TESTCA, TOPIC, HttpsIngest, TlsRedis,
                         kafka_client, secret_file, sessions_of,
                         start_secure_kafka, start_tls_postgres,
                         stop_services)

SIGNED = "signed"
GROUP = f"sluice-worker-s{uuid.uuid4().hex[:8]}"


class Stack:
    """One stack's handles: where to seed and read (services: PostgreSQL
    as its owner, the agent's DSN), Redis as an admin, the ingest to post
    to, the worker."""

    def __init__(self, services, redis_admin, ingest, worker):
        self.services = services
        self.redis = redis_admin
        self.ingest = ingest
        self.worker = worker
        self.agent_session = None       # (user, ssl) of the agent


@pytest.fixture(scope="module")
def secure_stack(tmp_path_factory):
    """The secure broker and the TLS PostgreSQL of deploy/services.sh in
    one directory, the TLS Redis with one tunnel, the ingest's
    certificate from the test CA."""
    if not STUNNEL:
        pytest.fail("stunnel4 is missing: run deploy/install-deps.sh")
    d = tmp_path_factory.mktemp("securestack")
    redis_ = None
    try:
        kafka = start_secure_kafka(d)
        pg = start_tls_postgres(d)
        redis_ = TlsRedis(tmp_path_factory.mktemp("securestack-redis"))
        tunnel = redis_.tunnel(redis_.ca)
        ca = tmp_path_factory.mktemp("securestack-ca")
        subprocess.run([str(TESTCA), str(ca), "ingest"], check=True,
                       timeout=60)
        env = _read_env_file(d / "services.env")
        env["SLUICE_REDIS_URL"] = redis_.user_url(tunnel)
        services = Services(d, env)
        yield {"kafka": kafka, "pg": pg, "redis": redis_,
               "services": services, "ca": ca}
    finally:
        if redis_ is not None:
            redis_.stop()
        stop_services(d, destroy=True)


def _sources(tmp, secrets):
    """Ingest's sources, the same on both stacks; the signing secrets in
    0600 files."""
    return {
        f"source__{SIGNED}__kind": "transcript",
        f"source__{SIGNED}__signature": "standard-webhooks",
        f"source__{SIGNED}__secret_file":
            str(secret_file(tmp / "signed.secret", secrets["signed"])),
        f"source__{CHAT_SOURCE}__kind": "chat",
        f"source__{CHAT_SOURCE}__signature": "meta",
        f"source__{CHAT_SOURCE}__secret_file":
            str(secret_file(tmp / "meta.secret", secrets["meta"])),
    }


def _scenario(st, ids, secrets):
    """Seeds, posts and waits on stack st; returns its end state."""
    s = st.services
    add_lead(s, ids["lead"], "Ada")
    add_inbox(s, ids["inbox"])
    add_phone_lead(s, ids["phone_lead"], "+" + ids["sender"], "Ana")
    cid, run = ids["cid"], ids["run"]
    populate_keys(st.redis, cid, pages=3)
    st.redis.set(f"campaign_run:{run}", "stale")
    st.redis.set(ids["outside"], "keep me")
    listener = Listener(s)
    agent = Agent(s, ids["biz"])
    try:
        # A transcript signed as Standard Webhooks signs it.
        body = json.dumps(transcript(cid, [("e1", "user", "hello, secure"),
                                           ("e2", "assistant", "hi")]))
        now = dt.datetime.now(tz=dt.timezone.utc)
        headers = {"webhook-id": ids["webhook_id"],
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": Webhook(secrets["signed"]).sign(
                       ids["webhook_id"], now, body)}
        r = st.ingest.post(body.encode(), source=SIGNED, headers=headers)
        assert r.status == 202, r
        # A campaign batch: Ada's context from PostgreSQL, a lead unknown.
        post_batch(st.ingest, batch(run, [msg(f"{run}-1", ids["lead"]),
                                          msg(f"{run}-2", ids["nobody"])],
                                    ids["inbox"], end_time=ids["end"]))
        # A WhatsApp message signed as Meta signs it.
        post_chat(st.ingest, webhook(ids["biz"], [text_message(
            ids["wamid"], ids["sender"], "hola, ¿sigue la oferta?",
            ids["ts"])]), secret=secrets["meta"])

        wait_until(lambda: s.scalar("SELECT count(*) FROM messages WHERE"
                                    " conversation_id = %s", (cid,)) == 2,
                   60, 0.2, "the transcript's two messages",
                   describe=lambda: st.worker.log_tail(15))
        wait_run(s, run, lambda c: c["status"] == "finished", 60,
                 worker=st.worker)
        listener.wait(f"{ids['biz']}:{ids['sender']}", timeout=60)
        wait_turns(s, ids["biz"], ids["sender"], [("open", [ids["wamid"]])],
                   worker=st.worker)
        # Who the agent is, and over what (compared per stack below).
        st.agent_session = agent.conn.execute(
            "SELECT current_user, ssl FROM pg_stat_ssl"
            " WHERE pid = pg_backend_pid()").fetchone()
        claimed = agent.claim()
        assert claimed is not None, "the agent claimed nothing"
        assert agent.answer(claimed["id"]) is True
        wait_until(lambda: not st.redis.keys(f"messages:{cid}:*")
                   and not st.redis.exists(f"conversation:{cid}")
                   and not st.redis.exists(f"campaign_run:{run}"), 30,
                   message="the transcript's and the run's keys gone")
    finally:
        agent.close()
        listener.close()
    return _end_state(st, ids, claimed)


def _timeless(v):
    """A JSON value without its timestamps (keys ending in _at)."""
    if isinstance(v, dict):
        return {k: _timeless(x) for k, x in v.items()
                if not k.endswith("_at")}
    if isinstance(v, list):
        return [_timeless(x) for x in v]
    return v


def _end_state(st, ids, claimed):
    s, cid, run = st.services, ids["cid"], ids["run"]
    q = s.query
    ctx = st.redis.get(f"lead_ctx:{ids['lead']}")
    return {
        "messages": q("SELECT conversation_id, position, role, content,"
                      " external_event_id FROM messages"
                      " WHERE conversation_id = %s ORDER BY position",
                      (cid,)),
        "conversation": q("SELECT id, status, last_event_type,"
                          " transcript_received FROM conversations"
                          " WHERE id = %s", (cid,)),
        "campaign_messages": q(
            "SELECT message_id, run_id, lead_id, status, parts, error"
            " FROM campaign_messages WHERE run_id = %s ORDER BY message_id",
            (run,)),
        "campaign_run": q(
            "SELECT id, campaign_id, workspace_id, inbox_id, end_time,"
            " total, processed, failed, paused, expired, status,"
            " finished_at IS NOT NULL FROM campaign_runs WHERE id = %s",
            (run,)),
        "chat_messages": q(
            "SELECT provider_message_id, business_number, sender, type,"
            " text, raw, sent_at FROM chat_messages"
            " WHERE business_number = %s ORDER BY provider_message_id",
            (ids["biz"],)),
        "chat_turns": [r[:3] + (_timeless(r[3]),) + r[4:] for r in q(
            "SELECT business_number, sender, lead_id, lead_context, status,"
            " message_ids, claimed_by, answered_at IS NOT NULL"
            " FROM chat_turns WHERE business_number = %s ORDER BY id",
            (ids["biz"],))],
        "claimed": (claimed["status"], claimed["claimed_by"],
                    claimed["message_ids"], claimed["lead_id"]),
        "redis": {
            "messages pages": sorted(st.redis.keys(f"messages:{cid}:*")),
            "conversation": st.redis.exists(f"conversation:{cid}"),
            "campaign_run": st.redis.exists(f"campaign_run:{run}"),
            "Ada's context cached": ctx is not None and b"Ada" in ctx,
            "outside": st.redis.get(ids["outside"]),
        },
    }


def _plain_https_refused(port):
    """Plain HTTP to an HTTPS-only listen gets no HTTP answer."""
    req = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
        c.settimeout(5)
        c.sendall(req)
        got = b""
        try:
            while chunk := c.recv(4096):
                got += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return b"HTTP/" not in got


def test_secure_stack_ends_as_the_plain_one(request, pipeline, services,
                                            secure_stack, tmp_path):
    u = uuid.uuid4().hex[:10]
    ids = {"cid": f"sec-conv-{u}", "run": f"sec-run-{u}",
           "lead": f"sec-lead-{u}", "nobody": f"sec-nobody-{u}",
           "inbox": f"sec-inbox-{u}", "phone_lead": f"sec-plead-{u}",
           "outside": f"other:{u}", "webhook_id": f"msg_{u}",
           "biz": business_number(), "sender": wa_id(), "wamid": wamid(),
           "ts": int(dt.datetime.now(dt.timezone.utc).timestamp()),
           "end": when(3600)}
    secrets = {"signed": "whsec_" + base64.b64encode(os.urandom(32)).decode(),
               "meta": uuid.uuid4().hex}

    # -- the plaintext stack, as the rest of the suite runs it
    (tmp_path / "plain").mkdir()
    worker = pipeline.start_worker()
    ingest = campaign_ingest(pipeline, **_sources(tmp_path / "plain",
                                                   secrets))
    plain = _scenario(Stack(services, services.redis(), ingest, worker),
                      ids, secrets)

    # -- the secure stack
    k, pg, ca = (secure_stack["kafka"], secure_stack["pg"],
                 secure_stack["ca"])
    ss = secure_stack["services"]
    spipe = Pipeline(request, ss, tmp_path / "secure")
    (tmp_path / "secure").mkdir()
    spipe.topic, spipe.group = TOPIC, GROUP
    try:
        wport = free_port()
        sworker = spipe.start_worker(
            listen=f"127.0.0.1:{wport}", postgres_dsn=pg.worker_dsn,
            redis_url=ss.redis_url, **kafka_client(k, "sluice_worker"))
        sdaemon = campaign_ingest(
            spipe, wait=False, tls_cert_file=str(ca / "ingest.crt"),
            tls_key_file=str(ca / "ingest.key"),
            **kafka_client(k, "sluice_ingest"),
            **_sources(tmp_path / "secure", secrets))
        singest = HttpsIngest(sdaemon, ca / "ca.crt").wait_healthy()
        wait_until(lambda: singest.request("GET", "/readyz").status == 200,
                   60, 0.5, "ingest /readyz on the secure broker",
                   describe=lambda: singest.request("GET", "/readyz"))
        assert _plain_https_refused(singest.port), \
            "plain HTTP was answered on the HTTPS-only listen"
        sst = Stack(ss, secure_stack["redis"].admin(), singest, sworker)
        secure = _scenario(sst, ids, secrets)
        assert sst.agent_session == (PG_AGENT, True), sst.agent_session

        # Every PostgreSQL session of the worker is TLS and a role's.
        roles = sessions_of(pg.query, sworker.pid)
        assert roles and {ssl for _, ssl in roles} == {True}, roles
        assert {u for u, _ in roles} <= {PG_WORKER, PG_LOOKUP}, roles
        assert PG_WORKER in {u for u, _ in roles}, roles
        # No secret in a log of the secure run.
        logs = sworker.log_text() + sdaemon.log_text()
        for user in ("sluice_ingest", "sluice_worker"):
            pw = open(k.password_file(user)).read().strip()
            assert pw not in logs, f"{user}'s Kafka password in a log"
        for v in secrets.values():
            assert v not in logs, "a signing secret in a log"
        assert "NOPERM" not in sworker.log_text(), sworker.log_tail(20)
        assert "permission denied" not in sworker.log_text(), \
            sworker.log_tail(20)
    finally:
        problems = spipe.check_daemons()
    assert not problems, "\n\n".join(problems)

    # -- the same end state, and a meaningful one
    assert secure == plain
    assert [r[3] for r in plain["messages"]] == ["hello, secure", "hi"]
    assert [r[3] for r in plain["campaign_messages"]] == ["ready", "failed"]
    assert "Hi Ada" in json.dumps(plain["campaign_messages"][0][4]), plain
    assert plain["chat_turns"][0][2] == ids["phone_lead"], plain
    assert plain["chat_turns"][0][4] == "answered", plain
    assert plain["claimed"][0] == "claimed", plain
    assert plain["redis"] == {"messages pages": [], "conversation": 0,
                              "campaign_run": 0,
                              "Ada's context cached": True,
                              "outside": b"keep me"}, plain["redis"]
