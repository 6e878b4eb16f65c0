# sluice-ingest over HTTPS (tls_cert_file, tls_key_file, tls_listen):
# webhooks over TLS land in Kafka and PostgreSQL as over plain HTTP; only
# TLS 1.2 and 1.3 with ECDHE + AEAD ciphers are spoken; the certificate
# served is the configured one, and a SIGHUP rotates it for new
# connections while open ones keep working (a bad file keeps the old one);
# the request deadline and the connection cap hold during the handshake;
# plain HTTP on the TLS port gets no HTTP answer and publishes nothing; a
# private key others can read is refused at start. Certificates come from
# deploy/testca.sh; testssl.sh, when installed, checks the listener as an
# outside scanner would.

import base64
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
import warnings
from datetime import datetime, timezone

import pytest
from standardwebhooks.webhooks import Webhook

from harness import BUILD_DIR, REPO, SCHEMA_DIR, http_request, transcript, \
    wait_until

TESTCA = REPO / "deploy" / "testca.sh"


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    """A test CA with two server certificates for 127.0.0.1 and
    localhost: "first" and "second" (the rotation's), in one directory."""
    d = tmp_path_factory.mktemp("ca")
    for name in ("first", "second"):
        subprocess.run([str(TESTCA), str(d), name], check=True, timeout=60)
    return d


def _install(ca, name, dest):
    """Copies certificate and key `name` to dest/server.{crt,key} (the
    key 0600, as testca.sh makes it); returns (cert path, key path)."""
    crt, key = dest / "server.crt", dest / "server.key"
    shutil.copyfile(ca / f"{name}.crt", crt)
    shutil.copyfile(ca / f"{name}.key", key)
    os.chmod(key, 0o600)
    return crt, key


def _der(path):
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client_ctx(ca, minimum=None, maximum=None, ciphers=None):
    """A client trusting the test CA. With an old protocol or a weak
    cipher the client's own floor is lowered (SECLEVEL=0), so a refusal
    is the server's, not the client's."""
    ctx = ssl.create_default_context(cafile=str(ca / "ca.crt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum or ciphers:
            ctx.set_ciphers((ciphers or "DEFAULT") + ":@SECLEVEL=0")
        if minimum:
            ctx.minimum_version = minimum
        if maximum:
            ctx.maximum_version = maximum
    return ctx


def _https(port, ctx, timeout=30):
    return http.client.HTTPSConnection("127.0.0.1", port, context=ctx,
                                       timeout=timeout)


def _tls_socket(port, ctx, timeout=30):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    except BaseException:
        raw.close()
        raise


def _start(pipeline, ca, tmp_path, name="first", **over):
    """sluice-ingest with plain HTTP on listen and HTTPS on tls_listen;
    returns (ingest, tls port, cert path, key path)."""
    crt, key = _install(ca, name, tmp_path)
    tls_port = _free_port()
    over.setdefault("tls_listen", f"127.0.0.1:{tls_port}")
    ingest = pipeline.start_ingest(tls_cert_file=str(crt),
                                   tls_key_file=str(key), **over)
    return ingest, tls_port, crt, key


def _metric(port, name):
    text = http_request(port, "GET", "/metrics", timeout=10).body.decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def _post(conn, cid, source="tavus", headers=None, body=None):
    body = body or json.dumps(transcript(cid, [("user", "over TLS")]))
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    conn.request("POST", f"/v1/webhooks/{source}", body, h)
    r = conn.getresponse()
    return r.status, r.read()


def test_webhooks_over_https_land_like_plain(pipeline, ca, tmp_path):
    secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    ingest, tls_port, _, _ = _start(pipeline, ca, tmp_path, **{
        "source__signed__kind": "transcript",
        "source__signed__signature": "standard-webhooks",
        "source__signed__secret": secret})
    pipeline.start_worker()
    ctx = _client_ctx(ca)
    conn = _https(tls_port, ctx)
    unsigned, signed, plain = pipeline.cid("u"), pipeline.cid("s"), \
        pipeline.cid("p")
    status, body = _post(conn, unsigned)
    assert status == 202, body
    assert json.loads(body)["conversationId"] == unsigned
    # The same keep-alive connection, a signed one.
    payload = json.dumps(transcript(signed, [("user", "signed")]))
    wid = f"msg_{uuid.uuid4().hex}"
    now = datetime.now(tz=timezone.utc)
    headers = {"webhook-id": wid,
               "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(secret).sign(wid, now, payload)}
    status, body = _post(conn, signed, "signed", headers, payload)
    assert status == 202, body
    # A bad signature is refused over TLS as over plain HTTP.
    headers["webhook-signature"] = "v1," + base64.b64encode(
        os.urandom(32)).decode()
    status, body = _post(conn, signed, "signed", headers, payload)
    assert status == 401, body
    conn.close()
    # Plain HTTP stays on listen beside it.
    assert ingest.post(transcript(plain, [("user", "plain")])).status == 202
    for cid in (unsigned, signed, plain):
        wait_until(lambda: pipeline.message_count(cid) == 1, 30,
                   message=f"{cid}'s message in PostgreSQL")
    assert pipeline.messages(signed)[0][2] == "signed"
    assert pipeline.services.topic_count(pipeline.topic) == 3


def test_protocols_ciphers_and_certificate(pipeline, ca, tmp_path):
    _, tls_port, crt, _ = _start(pipeline, ca, tmp_path)
    V = ssl.TLSVersion
    for old in (V.TLSv1, V.TLSv1_1):
        with pytest.raises(ssl.SSLError) as e:
            _tls_socket(tls_port, _client_ctx(ca, old, old)).close()
        # The server's alert (70), not the client declining to offer it.
        assert "PROTOCOL_VERSION" in str(e.value), e.value
    for ok in (V.TLSv1_2, V.TLSv1_3):
        with _tls_socket(tls_port, _client_ctx(ca, ok, ok)) as s:
            assert s.version() == ok.name.replace("v1_", "v1.")
            assert s.compression() is None
            assert s.getpeercert(binary_form=True) == _der(crt)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
    # TLS 1.2: RSA key exchange (no forward secrecy) and CBC with SHA-1
    # are refused even when the client offers nothing else...
    for weak in ("AES128-SHA", "AES256-GCM-SHA384", "ECDHE-RSA-AES128-SHA",
                 "ECDHE-RSA-AES256-SHA384"):
        with pytest.raises(ssl.SSLError) as e:
            _tls_socket(tls_port, _client_ctx(ca, V.TLSv1_2, V.TLSv1_2,
                                              weak)).close()
        assert "HANDSHAKE_FAILURE" in str(e.value), (weak, e.value)
    # ...while ECDHE with an AEAD cipher is taken, and the server picks
    # AES-GCM over ChaCha20 when offered both (its preference).
    for good in ("ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"):
        with _tls_socket(tls_port, _client_ctx(ca, V.TLSv1_2, V.TLSv1_2,
                                               good)) as s:
            assert s.cipher()[0] == good
    with _tls_socket(tls_port, _client_ctx(
            ca, V.TLSv1_2, V.TLSv1_2,
            "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256")) as s:
        assert s.cipher()[0] == "ECDHE-RSA-AES128-GCM-SHA256"


def test_sighup_rotates_certificate_and_keeps_it_on_a_bad_file(
        pipeline, ca, tmp_path):
    ingest, tls_port, crt, key = _start(pipeline, ca, tmp_path)
    ctx = _client_ctx(ca)
    kept = _https(tls_port, ctx)
    assert _post(kept, pipeline.cid())[0] == 202
    assert kept.sock.getpeercert(binary_form=True) == _der(crt)
    first = _der(crt)

    # Rotation: the files are replaced in place, then SIGHUP.
    shutil.copyfile(ca / "second.crt", crt)
    shutil.copyfile(ca / "second.key", key)
    ingest.signal(signal.SIGHUP)
    ingest.wait_log(r"reload: certificate now: /CN=second")
    with _tls_socket(tls_port, ctx) as s:
        assert s.getpeercert(binary_form=True) == _der(ca / "second.crt")
    # The connection opened before keeps its session and still works.
    assert _post(kept, pipeline.cid())[0] == 202
    assert kept.sock.getpeercert(binary_form=True) == first
    assert _metric(ingest.port,
                   'sluice_ingest_reloads_total{result="ok"}') == 1

    # A file that is no certificate: the reload fails, says why, and the
    # certificate in force stays.
    crt.write_text("not a certificate\n")
    ingest.signal(signal.SIGHUP)
    ingest.wait_log(r"reload of \S+ failed: tls_cert_file \S+: no PEM "
                    r"certificate: no start line; keeping the running "
                    r"configuration and certificate")
    with _tls_socket(tls_port, ctx) as s:
        assert s.getpeercert(binary_form=True) == _der(ca / "second.crt")
    assert _post(kept, pipeline.cid())[0] == 202
    # A key that does not match the certificate: the same.
    shutil.copyfile(ca / "second.crt", crt)
    shutil.copyfile(ca / "first.key", key)
    ingest.signal(signal.SIGHUP)
    ingest.wait_log(r"reload of \S+ failed: tls_key_file \S+ does not match "
                    r"the certificate")
    assert _metric(ingest.port,
                   'sluice_ingest_reloads_total{result="failed"}') == 2
    with _tls_socket(tls_port, ctx) as s:
        assert s.getpeercert(binary_form=True) == _der(ca / "second.crt")
    kept.close()


def test_https_switched_on_by_a_reload_waits_for_a_restart(pipeline, ca,
                                                           tmp_path):
    ingest = pipeline.start_ingest()
    crt, key = _install(ca, "first", tmp_path)
    tls_port = _free_port()
    with open(ingest.config, "a") as f:
        f.write(f"tls_listen = 127.0.0.1:{tls_port}\n"
                f"tls_cert_file = {crt}\ntls_key_file = {key}\n")
    ingest.signal(signal.SIGHUP)
    ingest.wait_log(r"reload: restart required for HTTPS switched on "
                    r"\(tls_cert_file\), tls_listen; they keep their running "
                    r"values")
    assert _metric(ingest.port, 'sluice_ingest_reloads_total'
                   '{result="restart_required"}') == 1
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", tls_port), timeout=5)
    assert ingest.post(transcript(pipeline.cid(), [("user", "hi")])) \
        .status == 202


def _closed_after(sock, limit=10):
    """Seconds until the peer closes sock (recv gives b"" or a reset);
    what it sent before, if anything."""
    t0 = time.monotonic()
    sock.settimeout(limit)
    got = b""
    try:
        while True:
            d = sock.recv(4096)
            if not d:
                break
            got += d
    except (ConnectionResetError, ssl.SSLError):
        pass
    return time.monotonic() - t0, got


def test_silent_clients_closed_at_request_timeout(pipeline, ca, tmp_path):
    ingest, tls_port, _, _ = _start(pipeline, ca, tmp_path,
                                    request_timeout_s=2)
    ctx = _client_ctx(ca)
    # TCP open, no handshake at all.
    with socket.create_connection(("127.0.0.1", tls_port)) as s:
        took, got = _closed_after(s)
    assert 1.5 <= took <= 4 and got == b"", (took, got)
    # Handshake done, then nothing.
    with _tls_socket(tls_port, ctx) as s:
        took, got = _closed_after(s)
    assert 1.5 <= took <= 4 and got == b"", (took, got)
    # Half a request over TLS: 408 in sluice's JSON, through the TLS.
    with _tls_socket(tls_port, ctx) as s:
        s.sendall(b"POST /v1/webhooks/tavus HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"a")
        took, got = _closed_after(s)
    assert 1.5 <= took <= 4, took
    assert got.startswith(b"HTTP/1.1 408"), got
    assert b'"error":"request_timeout"' in got
    ingest.wait_log(r"TLS handshake failed on connection \d+: closed by the "
                    r"client or at the deadline")
    assert _metric(ingest.port, "sluice_ingest_request_timeouts_total") >= 3


def test_connection_cap_is_shared_and_holds_over_tls(pipeline, ca, tmp_path):
    ingest, tls_port, _, _ = _start(pipeline, ca, tmp_path,
                                    max_connections=2)
    ctx = _client_ctx(ca)
    idle_plain = socket.create_connection(("127.0.0.1", ingest.port))
    idle_tls = _tls_socket(tls_port, ctx)
    try:
        time.sleep(0.3)                 # both accepted by the loop
        # Over the cap, a TLS client that completes its handshake gets the
        # usual 503, then the connection is closed.
        over = _https(tls_port, ctx)
        status, body = _post(over, pipeline.cid())
        assert status == 503, body
        assert json.loads(body)["error"] == "too_many_connections"
        assert over.sock is None or _closed_after(over.sock, 5)[1] == b""
        over.close()
        # A probe still works there (a flood never fails a liveness check).
        probe = _https(tls_port, ctx)
        probe.request("GET", "/healthz")
        assert probe.getresponse().status == 200
        probe.close()
        # A refused TLS client that never completes its handshake is
        # closed at the refused connections' short deadline (2 s).
        with socket.create_connection(("127.0.0.1", tls_port)) as s:
            took, _ = _closed_after(s)
        assert took <= 4, took
    finally:
        idle_plain.close()
        idle_tls.close()
    # Below the cap again: served.
    conn = _https(tls_port, ctx)
    wait_until(lambda: _post(conn, pipeline.cid())[0] == 202, 10,
               message="a 202 once the idle connections are gone")
    conn.close()
    assert _metric(ingest.port,
                   "sluice_ingest_connections_refused_total") >= 3


def test_plain_http_on_the_tls_port(pipeline, ca, tmp_path):
    ingest, tls_port, _, _ = _start(pipeline, ca, tmp_path)
    body = json.dumps(transcript(pipeline.cid(), [("user", "plaintext")]))
    request = (f"POST /v1/webhooks/tavus HTTP/1.1\r\nHost: x\r\n"
               f"Content-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n{body}").encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", tls_port),
                                      timeout=10) as s:
            s.sendall(request)
            took, got = _closed_after(s)
        assert b"HTTP/" not in got, got
        assert took < 2, took           # refused at once, not at a deadline
    ingest.wait_log(r"TLS handshake failed on connection \d+: http request")
    ingest.assert_alive()
    # The positive control: the same request over TLS is published.
    assert pipeline.services.topic_count(pipeline.topic) == 0
    conn = _https(tls_port, _client_ctx(ca))
    assert _post(conn, pipeline.cid(), body=body)[0] == 202
    conn.close()
    assert pipeline.services.topic_count(pipeline.topic) == 1


def test_https_on_listen_itself(pipeline, ca, tmp_path):
    """Without tls_listen, listen itself is HTTPS: plain HTTP there is
    refused, HTTPS served."""
    crt, key = _install(ca, "first", tmp_path)
    ingest = pipeline.start_ingest(wait=False, tls_cert_file=str(crt),
                                   tls_key_file=str(key))
    ctx = _client_ctx(ca)

    def healthy():
        ingest.assert_alive()
        try:
            c = _https(ingest.port, ctx, timeout=2)
            c.request("GET", "/healthz")
            return c.getresponse().status == 200
        except OSError:
            return False
    wait_until(healthy, 60, message="GET /healthz over HTTPS on listen")
    ingest.wait_log(r"listening on 127\.0\.0\.1:\d+ \(HTTPS\)")
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        http_request(ingest.port, "GET", "/healthz", timeout=5)
    conn = _https(ingest.port, ctx)
    assert _post(conn, pipeline.cid())[0] == 202
    conn.close()


def _config(tmp_path, crt, key):
    cfg = tmp_path / "ingest.conf"
    cfg.write_text(f"listen = 127.0.0.1:{_free_port()}\n"
                   "brokers = 127.0.0.1:1\n"
                   f"schema_dir = {SCHEMA_DIR}\n"
                   f"tls_cert_file = {crt}\ntls_key_file = {key}\n"
                   "source.a.kind = transcript\nsource.a.signature = none\n")
    return cfg


def test_key_readable_by_others_refused_at_start(ca, tmp_path):
    crt, key = _install(ca, "first", tmp_path)
    cfg = _config(tmp_path, crt, key)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    binary = str(BUILD_DIR / "sluice-ingest")
    for mode in (0o644, 0o640, 0o604):
        os.chmod(key, mode)
        want = (f"tls_key_file {key}: permissions {mode:04o} are too open: "
                "a secret file must not be accessible by group or others")
        for args in ([], ["--check-config"]):
            r = subprocess.run([binary, "-c", str(cfg), *args],
                               capture_output=True, text=True, timeout=30,
                               env=env)
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            assert want in r.stderr, (args, r.stderr)
            assert "listening" not in r.stderr
    os.chmod(key, 0o600)
    r = subprocess.run([binary, "-c", str(cfg), "--check-config"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    assert "configuration ok" in r.stdout
    # Half of the pair is refused too.
    cfg.write_text(cfg.read_text().replace(f"tls_key_file = {key}\n", ""))
    r = subprocess.run([binary, "-c", str(cfg), "--check-config"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 1
    assert "tls_cert_file and tls_key_file go together" in r.stderr


TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")


def test_testssl_finds_nothing_weak(pipeline, ca, tmp_path):
    """Debian's testssl.sh against the HTTPS listener: protocols, cipher
    categories, forward secrecy, server preference, the certificate,
    renegotiation and compression (about 25 s)."""
    assert TESTSSL, "testssl.sh is missing: run deploy/install-deps.sh"
    _, tls_port, crt, _ = _start(pipeline, ca, tmp_path)
    out = tmp_path / "testssl.json"
    r = subprocess.run(
        [TESTSSL, "--quiet", "--color", "0", "--warnings", "off",
         "--add-ca", str(ca / "ca.crt"), "--jsonfile", str(out),
         "-p", "-s", "-f", "-P", "-S", "-R", "-C",
         f"https://127.0.0.1:{tls_port}"],
        capture_output=True, text=True, timeout=120)
    assert out.exists(), r.stdout[-3000:] + r.stderr[-2000:]
    found = {f["id"]: f["finding"] for f in json.loads(out.read_text())}
    summary = "\n".join(f"{k}: {v}" for k, v in found.items())
    for proto in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert found[proto] == "not offered", summary
    assert found["TLS1_2"] == "offered", summary
    assert found["TLS1_3"].startswith("offered"), summary
    for weak in ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT",
                 "cipherlist_LOW", "cipherlist_3DES_IDEA",
                 "cipherlist_AVERAGE"):
        assert found[weak].startswith("not offered"), summary
    assert found["cipherlist_STRONG"].startswith("offered"), summary
    assert found["PFS"].startswith("offered"), summary
    assert found["cipher_order"].startswith("server"), summary
    assert found["secure_client_renego"] == "not vulnerable", summary
    assert found["CRIME_TLS"] == "not vulnerable", summary
    assert found["cert_chain_of_trust"].startswith("passed"), summary
    sha256 = hashlib.sha256(_der(crt)).hexdigest().upper()
    assert found["cert_fingerprintSHA256"] == sha256, summary
    # Kept beside the test's other files, for whoever reads the run.
    (tmp_path / "testssl.txt").write_text(summary)
    assert not re.search(r"\bRC4\b|\bDES-CBC\b|NULL-", found["PFS_ciphers"])
