# Redis as docs/security.md deploys it: the worker as an ACL user limited
# to its own keys and commands (the doc's ACL SETUSER line, applied as it
# is written there), over TLS through a local stunnel4 tunnel because
# Debian's hiredis 0.14 speaks no TLS. Redis here is one of the test's
# own: clear text off (`port 0`), a `tls-port` only, a certificate from a
# throwaway CA (deploy/testca.sh).

import re
import socket
import subprocess
import uuid

import pytest
import redis

from campaign_util import (add_inbox, batch, campaign_ingest, msg,
                           post_batch, post_lead_updated, uid, wait_rows)
from harness import free_port, http_request, populate_keys, transcript, \
    wait_until
from secure_util import SLUICE_PASSWORD, STUNNEL, TESTCA, TlsRedis


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory):
    if not STUNNEL:
        pytest.fail("stunnel4 is missing: run deploy/install-deps.sh")
    r = TlsRedis(tmp_path_factory.mktemp("tlsredis"))
    yield r
    r.stop()


def test_pipeline_as_acl_user_through_tls_tunnel(pipeline, services,
                                                 leadstub, tls_redis):
    port = tls_redis.tunnel(tls_redis.ca)
    url = f"redis://sluice:{SLUICE_PASSWORD}@127.0.0.1:{port}/0"
    admin = tls_redis.admin()
    outside = f"other:{uuid.uuid4().hex}"
    admin.set(outside, "keep me")
    cid = pipeline.cid()
    populate_keys(admin, cid, pages=5)
    run, inbox, lead = uid("run-"), uid("inbox-"), uid("lead-")
    add_inbox(services, inbox)
    leadstub.set(lead, {"lead": {"name": "Ada"}})
    admin.set(f"campaign_run:{run}", "stale")

    http_port = free_port()
    worker = pipeline.start_worker(redis_url=url, redis_timeout_ms=2000,
                                   listen=f"127.0.0.1:{http_port}",
                                   lead_context__source="http",
                                   lead_context__url=leadstub.url)
    ingest = campaign_ingest(pipeline, source__tavus__kind="transcript",
                             source__tavus__signature="none")
    assert ingest.post(transcript(cid, [("user", "hi")])).status == 202
    post_batch(ingest, batch(run, [msg(f"{run}-1", lead)], inbox))

    wait_until(lambda: pipeline.message_count(cid) == 1, 30,
               message="the transcript row")
    got = wait_rows(services, run, 1, timeout=30, worker=worker)
    assert [r["status"] for r in got.values()] == ["ready"], got
    # The record's keys are gone, the lead's context cached, the key
    # outside the user's patterns untouched.
    wait_until(lambda: not admin.keys(f"messages:{cid}:*")
               and not admin.exists(f"conversation:{cid}")
               and not admin.exists(f"campaign_run:{run}"), 15,
               message="the transcript's and the run's keys invalidated")
    assert b"Ada" in (admin.get(f"lead_ctx:{lead}") or b"")
    post_lead_updated(ingest, lead)
    wait_until(lambda: not admin.exists(f"lead_ctx:{lead}"), 15,
               message="lead_updated to delete the cached context")
    assert admin.get(f"lead_ctx_ver:{lead}") is not None
    assert admin.get(outside) == b"keep me"

    # The user itself cannot reach that key.
    user = redis.Redis(host="127.0.0.1", port=port, username="sluice",
                       password=SLUICE_PASSWORD, socket_timeout=5)
    for cmd in (("GET", outside), ("SET", outside, "x"), ("DEL", outside),
                ("FLUSHALL",), ("CONFIG", "GET", "*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.execute_command(*cmd)
    assert admin.get(outside) == b"keep me"
    assert "NOPERM" not in worker.log_text(), \
        "the worker was refused a command or key it needs"
    r = http_request(http_port, "GET", "/readyz")
    assert r.status == 200, r


def test_plain_connection_to_tls_port_gets_nothing(tls_redis):
    s = socket.create_connection(("127.0.0.1", tls_redis.tls_port), 5)
    s.settimeout(3)
    s.sendall(b"PING\r\n")
    try:
        data = s.recv(100)
    except (socket.timeout, ConnectionResetError):
        data = b""
    s.close()
    assert b"PONG" not in data, data


def test_tunnel_trusting_another_ca_fails(tls_redis, tmp_path):
    other = tmp_path / "otherca"
    subprocess.run([str(TESTCA), str(other), "x"], check=True)
    port = tls_redis.tunnel(other / "ca.crt")
    user = redis.Redis(host="127.0.0.1", port=port, username="sluice",
                       password=SLUICE_PASSWORD, socket_timeout=5)
    with pytest.raises(redis.exceptions.ConnectionError):
        user.ping()
    log = (tls_redis.dir / f"tunnel{len(tls_redis.tunnels) - 1}.log")
    wait_until(lambda: re.search(r"certificate verify failed|"
                                 r"CERT_CHECK|verify error",
                                 log.read_text(errors="replace"), re.I),
               10, message="stunnel to log the verification failure")
