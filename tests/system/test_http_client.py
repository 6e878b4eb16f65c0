# The worker's HTTP client (worker/httpc.c) as the lead-context source uses
# it (docs/campaigns.md, "Sources"):
#
# - https:// with a CA made for the test (http.ca_file): contexts found;
#   the same source behind a CA the worker does not trust: the leads fail
#   context_unavailable and the log names the verification failure;
# - keep-alive: 100 lookups at K = 5 over at most K connections (+1);
# - a host name (localhost) resolves through evdns;
# - the per-call deadline: a source that hangs fails its lead after
#   lead_context.timeout_ms per attempt, a timed-out connection is never
#   reused, and the worker's /healthz answers meanwhile.

import subprocess
import time

import pytest

from campaign_util import (add_inbox, batch, campaign_ingest, campaign_lines,
                           http_worker, msg, post_batch, uid, wait_rows)
from harness import free_port, http_request, wait_until
from leadstub import LeadStub


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


def _make_ca(d, name):
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-subj", f"/CN={name}", "-keyout", f"{name}.key",
             "-out", f"{name}.pem",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return d / f"{name}.pem"


def _make_leaf(d, ca, name):
    (d / f"{name}.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-subj",
             "/CN=localhost", "-keyout", f"{name}.key", "-out",
             f"{name}.csr", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem",
             "-CAkey", f"{ca}.key", "-CAcreateserial", "-days", "2",
             "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d)
    return d / f"{name}.pem", d / f"{name}.key"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A test CA and a server certificate it signed (localhost and
    127.0.0.1), and a second CA that signed nothing of the server's."""
    d = tmp_path_factory.mktemp("certs")
    ca = _make_ca(d, "testca")
    cert, key = _make_leaf(d, "testca", "server")
    other = _make_ca(d, "otherca")
    return {"ca": ca, "cert": cert, "key": key, "other_ca": other}


def _run(pipeline, services, ingest, stub, n, tag, name=lambda i: f"N{i}"):
    inbox = add_inbox(services, uid("inbox-"))
    leads = [uid(f"{pipeline.prefix}{tag}-") for _ in range(n)]
    for i, lead in enumerate(leads):
        stub.set(lead, {"lead": {"name": name(i)}})
    run = uid("run-")
    post_batch(ingest, batch(run, [msg(f"{run}-{i}", lead)
                                   for i, lead in enumerate(leads)], inbox))
    return run, leads


def test_https_source_with_its_ca(pipeline, services, certs):
    """https:// by name: SNI and the name checked against the certificate,
    the chain against http.ca_file; the connections kept alive."""
    stub = LeadStub(tls=(str(certs["cert"]), str(certs["key"]))).start()
    try:
        worker = http_worker(pipeline, stub,
                             lead_context__url=stub.url_for("localhost"),
                             lead_context__concurrency=5,
                             http__ca_file=str(certs["ca"]))
        ingest = campaign_ingest(pipeline)
        n = 30
        run, _ = _run(pipeline, services, ingest, stub, n, "tls")
        got = wait_rows(services, run, n, worker=worker)
        assert {k: (r["status"], r["parts"]) for k, r in got.items()} == \
            {f"{run}-{i}": ("ready", [f"Hi N{i}"]) for i in range(n)}, got
        snap = stub.snapshot()
        assert snap["total"] == n and snap["tls_failures"] == 0, snap
        # Every handshake costs a round trip or two: reused, not redone.
        assert snap["connections"] <= 5 + 1, snap
    finally:
        stub.stop()


def test_https_source_with_an_untrusted_ca(pipeline, services, certs):
    stub = LeadStub(tls=(str(certs["cert"]), str(certs["key"]))).start()
    try:
        worker = http_worker(pipeline, stub,
                             lead_context__url=stub.url_for("127.0.0.1"),
                             lead_context__retries=1,
                             http__ca_file=str(certs["other_ca"]))
        ingest = campaign_ingest(pipeline)
        run, _ = _run(pipeline, services, ingest, stub, 3, "untrusted")
        got = wait_rows(services, run, 3, worker=worker)
        assert {(r["status"], r["error"]) for r in got.values()} == \
            {("failed", "context_unavailable")}, got
        # No request ever reached the source: the handshake failed first.
        snap = stub.snapshot()
        assert snap["total"] == 0 and snap["tls_failures"] >= 3, snap
        log = worker.log_text()
        assert "tls: certificate verify failed for 127.0.0.1" in log, \
            worker.log_tail(20)
    finally:
        stub.stop()


def test_keep_alive_reuses_k_connections(pipeline, services):
    k, n = 5, 100
    stub = LeadStub().start()
    try:
        worker = http_worker(pipeline, stub, lead_context__concurrency=k)
        ingest = campaign_ingest(pipeline)
        run, _ = _run(pipeline, services, ingest, stub, n, "ka")
        got = wait_rows(services, run, n, worker=worker)
        assert {r["status"] for r in got.values()} == {"ready"}, got
        snap = stub.snapshot()
        assert snap["total"] == n and snap["peak"] <= k, snap
        # One connection per lookup before; now at most K (+1 for a
        # connection the source may have closed).
        assert snap["connections"] <= k + 1, snap
        line = campaign_lines(worker.log_text())[-1]
        assert line["lookups"] == n, line["line"]
    finally:
        stub.stop()


def _dual_stack_stub():
    """Listening on :: and 127.0.0.1 alike, so "localhost" works whichever
    address /etc/hosts gives first; IPv4 only where IPv6 is off."""
    try:
        return LeadStub(host="::").start()
    except OSError:
        return LeadStub().start()


def test_host_name_resolves(pipeline, services):
    stub = _dual_stack_stub()
    try:
        worker = http_worker(pipeline, stub,
                             lead_context__url=stub.url_for("localhost"))
        ingest = campaign_ingest(pipeline)
        run, _ = _run(pipeline, services, ingest, stub, 3, "name")
        got = wait_rows(services, run, 3, worker=worker)
        assert {r["status"] for r in got.values()} == {"ready"}, got
    finally:
        stub.stop()


def test_deadline_ends_a_hung_call(pipeline, services):
    """Each attempt ends after timeout_ms (the call's deadline: the
    connection's, the request's and the answer's time together); the
    timed-out connection is dropped, so the retry opens a new one."""
    timeout_ms = 1500
    port = free_port()
    stub = LeadStub().start()
    try:
        stub.delay = 60                 # every lead hangs
        worker = http_worker(pipeline, stub,
                             listen=f"127.0.0.1:{port}",
                             lead_context__concurrency=1,
                             lead_context__retries=1,
                             lead_context__timeout_ms=timeout_ms)
        ingest = campaign_ingest(pipeline)
        run, (lead,) = _run(pipeline, services, ingest, stub, 1, "hung")
        wait_until(lambda: stub.calls_for(lead) >= 1, 30, 0.05,
                   message="the first lookup to reach the source")
        # The worker answers while its lookup hangs.
        for _ in range(5):
            r = http_request(port, "GET", "/healthz", timeout=5)
            assert r.status == 200, r
            time.sleep(0.1)
        got = wait_rows(services, run, 1, worker=worker)
        assert (got[f"{run}-0"]["status"], got[f"{run}-0"]["error"]) == \
            ("failed", "context_unavailable"), got
        snap = stub.snapshot()
        assert snap["calls"] == {lead: 2}, snap
        assert snap["connections"] == 2, snap
        line = campaign_lines(worker.log_text())[-1]
        # Two attempts, each cut at its deadline (a lower bound only).
        assert line["lookup_ms"] >= 2 * timeout_ms - 100, line["line"]
        assert "after 2 lookups: timeout" in worker.log_text(), \
            worker.log_tail(20)
    finally:
        stub.stop()


def test_stop_while_calls_hang(pipeline, services, certs):
    """SIGTERM while https calls hang: the batch ends by its budget (a
    batch waiting on lookups is finished, not dropped, on SIGTERM), the
    calls still running are cancelled and their TLS connections freed
    (ASan/LSan-clean under the sanitized build), and the worker exits 0."""
    stub = LeadStub(tls=(str(certs["cert"]), str(certs["key"]))).start()
    try:
        stub.delay = 60
        worker = http_worker(pipeline, stub,
                             lead_context__url=stub.url_for("localhost"),
                             lead_context__concurrency=3,
                             lead_context__timeout_ms=60000,
                             lead_context__batch_budget_ms=4000,
                             http__ca_file=str(certs["ca"]))
        ingest = campaign_ingest(pipeline)
        _run(pipeline, services, ingest, stub, 5, "stop")
        wait_until(lambda: stub.in_flight() == 3, 30, 0.05,
                   message="three lookups hanging at the source",
                   describe=stub.snapshot)
        t = time.monotonic()
        assert worker.stop() == 0, worker.log_tail(20)
        assert time.monotonic() - t < 30
        assert worker.crash_lines() == [], worker.crash_lines()
    finally:
        stub.stop()
