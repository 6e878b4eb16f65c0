# sluice-ingest's HTTP hygiene and probes (docs/architecture.md, the
# sluice-ingest section; docs/operations.md):
# - /readyz recovers by itself once Kafka is back (a metadata probe), with
#   no POST needed;
# - /healthz and /readyz are answered over max_connections;
# - a GET or HEAD that declares a body is refused, so the body cannot be
#   smuggled in as a second request;
# - the answers libevent gives itself are sluice's JSON errors too;
# - bad percent-encoding in a path segment is refused;
# - a 413 names the limit that was applied.

import json
import re
import socket
import time

import pytest

from campaign_util import batch, campaign_ingest, msg
from harness import (SOURCE, http_request, raw_request, transcript,
                      wait_until)


def _read_all(sock, quiet=3.0):
    """Everything the server sends until it closes, or until `quiet`
    seconds pass without a byte."""
    sock.settimeout(quiet)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, False
        if not chunk:
            return data, True
        data += chunk


def _status_lines(data):
    return re.findall(rb"(?m)^HTTP/1\.[01] (\d{3})", data)


def _json_error(r, what):
    assert r.headers.get("content-type", "").startswith(
        "application/json"), f"{what}: not JSON: {r.headers} {r!r}"
    assert isinstance(r.json, dict) and isinstance(r.json.get("error"), str), (
        f"{what}: no JSON error field: {r!r}")
    return r.json


# ------------------------------------------------------------ probes

def test_readyz_recovers_without_a_post(pipeline, services):
    """Kafka stops: a POST fails and /readyz says 503. Kafka comes back:
    /readyz is 200 again on its own, although nothing was posted since."""
    ingest = pipeline.start_ingest(delivery_timeout_ms=3000)
    assert ingest.request("GET", "/readyz").status == 200
    try:
        services.stop_kafka()
        r = ingest.post(transcript(pipeline.cid("down"), [("user", "x")]),
                        timeout=40)
        assert r.status == 503, f"with Kafka down: {r!r}"
        wait_until(lambda: ingest.request("GET", "/readyz").status == 503,
                   30, 0.2, "/readyz to say 503 while Kafka is down")
    finally:
        services.start_kafka()
    wait_until(lambda: services.kafka_up(timeout=2), 60,
               message="Kafka to come back")
    posts = ingest.request("GET", "/metrics").body.decode()

    def ready():
        r = ingest.request("GET", "/readyz")
        return r.status == 200 and r.json["kafka"]["ok"] is True
    wait_until(ready, 60, 0.25,
               "/readyz to say 200 once Kafka answers, with no POST",
               describe=lambda: ingest.request("GET", "/readyz"))
    # Nothing was published meanwhile: the probe alone brought it back.
    after = ingest.request("GET", "/metrics").body.decode()
    line = r"sluice_ingest_delivered_total (\d+)"
    assert re.search(line, posts).group(1) == re.search(line, after).group(1)
    assert "kafka answers again" in ingest.log_text(since_start=True)


def test_probes_answered_over_the_connection_cap(pipeline, services):
    """max_connections idle connections are open: a POST on one more is
    refused 503 too_many_connections, but /healthz and /readyz are still
    answered as usual."""
    cap = 8
    ingest = pipeline.start_ingest(max_connections=cap, request_timeout_s=60)
    idle = [socket.create_connection(("127.0.0.1", ingest.port))
            for _ in range(cap)]
    try:
        time.sleep(0.5)  # accepted by the daemon's loop
        over = ingest.post(transcript(pipeline.cid("over"), [("user", "x")]))
        assert over.status == 503 and over.json["error"] == \
            "too_many_connections", f"the cap is not in force: {over!r}"
        h = ingest.request("GET", "/healthz")
        assert h.status == 200 and h.json == {"status": "ok"}, (
            f"/healthz over the cap: {h!r}")
        r = ingest.request("GET", "/readyz")
        assert not (r.json or {}).get("error") == "too_many_connections", (
            f"/readyz over the cap: {r!r}")
        assert r.status == 200, f"/readyz over the cap: {r!r}"
        head = ingest.request("HEAD", "/healthz")
        assert head.status == 200, head
        m = ingest.request("GET", "/metrics")
        assert m.status == 200, m
        conns = int(re.search(r"(?m)^sluice_ingest_connections (\d+)",
                              m.body.decode()).group(1))
        assert conns >= cap + 1, f"only {conns} connections open"
    finally:
        for s in idle:
            s.close()


# ------------------------------------------------------------ smuggling

def _smuggled(cid):
    body = json.dumps(transcript(cid, [("user", "smuggled")])).encode()
    return (b"POST /v1/webhooks/%s HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (SOURCE.encode(), len(body))
            ) + body


@pytest.mark.parametrize("method,framing", [
    ("HEAD", "content-length"), ("GET", "content-length"),
    ("GET", "chunked"), ("HEAD", "chunked")])
def test_get_and_head_with_a_body_are_refused(pipeline, services, method,
                                              framing):
    ingest = pipeline.start_ingest()
    inner = _smuggled(pipeline.cid("smuggled"))
    if framing == "content-length":
        outer = (b"%s /healthz HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Length: %d\r\n\r\n" % (method.encode(), len(inner))
                 ) + inner
    else:
        outer = (b"%s /healthz HTTP/1.1\r\nHost: x\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n%x\r\n"
                 % (method.encode(), len(inner))) + inner + b"\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", ingest.port)) as s:
        s.sendall(outer)
        data, closed = _read_all(s)
    statuses = _status_lines(data)
    assert statuses == [b"400"], (
        f"{method} with a body ({framing}): answers {statuses}: {data[:600]!r}")
    head, _, body = data.partition(b"\r\n\r\n")
    assert re.search(rb"(?mi)^connection: close", head), head
    assert closed, "the connection was left open after the refusal"
    if method == "GET":
        j = json.loads(body)
        assert j["error"] == "body_not_allowed", j
    else:
        assert body == b"", f"HEAD answer with a body: {body!r}"
    time.sleep(1)
    n = services.topic_count(pipeline.topic)
    assert n == 0, f"the smuggled webhook reached Kafka ({n} records)"
    # A GET with Content-Length: 0 is still a plain GET.
    r = raw_request(ingest.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Length: 0\r\n\r\n")
    assert r.status == 200, r


# ------------------------------------------------------------ libevent's own

_POST = b"POST /v1/webhooks/" + SOURCE.encode() + b" HTTP/1.1\r\nHost: x\r\n"

LIBEVENT_SHAPES = [
    ("unparsable request line", b"GARBAGE\r\n\r\n", 400),
    ("bad HTTP version", b"GET /healthz HTTP/x\r\n\r\n", 400),
    ("header without a colon", b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n",
     400),
    ("unknown method", b"FOO /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    ("TRACE", b"TRACE /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    ("CONNECT", b"CONNECT x:80 HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    ("Content-Length not a number",
     _POST + b"Content-Length: abc\r\n\r\n", 400),
    ("Content-Length beside chunked",
     _POST + b"Content-Type: application/json\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("Content-Length beside gzip",
     _POST + b"Content-Type: application/json\r\nContent-Length: 2\r\n"
     b"Transfer-Encoding: gzip\r\n\r\n{}", 400),
    # libevent ends a chunked body it cannot read with 413, whatever the
    # reason; the JSON message says so.
    ("bad chunk size",
     _POST + b"Content-Type: application/json\r\n"
     b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 413),
    ("Expect other than 100-continue",
     _POST + b"Expect: teapot\r\nContent-Length: 2\r\n\r\n{}", 417),
    ("declared length far over the limit",
     _POST + b"Content-Type: application/json\r\n"
     b"Content-Length: 2147483648\r\n\r\n", 413),
]


def test_libevent_errors_are_json(pipeline, services):
    ingest = pipeline.start_ingest(max_body_bytes=65536)
    failures = []
    for name, data, status in LIBEVENT_SHAPES:
        try:
            r = raw_request(ingest.port, data, timeout=10)
            if r.status != status:
                failures.append(f"{name}: {r.status}, want {status}: {r!r}")
                continue
            _json_error(r, name)
        except (AssertionError, OSError) as exc:
            failures.append(f"{name}: {exc}")
    assert not failures, "\n".join(failures)
    # counted like sluice's own answers (under route "other": evhttp
    # answers before any path is known)
    page = ingest.request("GET", "/metrics").body.decode()
    n400 = int(re.search(r'(?m)^sluice_ingest_responses_total\{route="other",'
                         r'code="400"\} (\d+)', page).group(1))
    assert n400 == sum(1 for x in LIBEVENT_SHAPES if x[2] == 400), page
    r = raw_request(ingest.port, LIBEVENT_SHAPES[-1][1])
    # the number that was applied: 4 x 65536 + 65536
    assert "327680" in r.json["message"], r.json
    ingest.assert_alive()
    assert services.topic_count(pipeline.topic) == 0


def test_request_timeout_is_json(pipeline, services):
    """A request not received whole within request_timeout_s, its bytes
    dripping in: 408 with sluice's JSON."""
    ingest = pipeline.start_ingest(request_timeout_s=2)
    with socket.create_connection(("127.0.0.1", ingest.port)) as s:
        s.sendall(_POST + b"Content-Type: applic")
        s.settimeout(0.5)
        data = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            except socket.timeout:
                try:
                    s.sendall(b"a")  # one byte every half second
                except OSError:
                    break
            except OSError:
                break
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), data
    assert re.search(rb"(?mi)^content-type: application/json", head), data
    assert json.loads(body)["error"] == "request_timeout", data


# ------------------------------------------------------------ percent-encoding

def test_bad_percent_encoding_refused(pipeline, services):
    ingest = campaign_ingest(pipeline)
    good = batch("run-pct", [msg("m-1", "l-1")], "inbox-1")
    bad = [
        ("/v1/campaigns/%ZZ/batches", "%ZZ"),
        ("/v1/campaigns/ab%4/batches", "%4"),
        ("/v1/campaigns/a%00b/batches", "NUL"),
        ("/v1/webhooks/%ZZ", "%ZZ"),
        (f"/v1/webhooks/{SOURCE}%0", "%0"),
        ("/v1/webhooks/ta%00vus", "NUL"),
    ]
    for path, named in bad:
        body = good if "campaigns" in path else transcript(
            pipeline.cid("pct"), [("user", "x")])
        r = http_request(ingest.port, "POST", path, body)
        assert r.status == 400, f"{path}: {r!r}"
        j = _json_error(r, path)
        assert j["error"] == "bad_path", j
        assert named in j["message"], (path, j)
    assert services.topic_count(pipeline.topic) == 0
    # Good encodings decode: %41 is A, %74 is t.
    r = http_request(ingest.port, "POST", "/v1/campaigns/%41bc/batches", good)
    assert r.status == 202, r
    r = http_request(ingest.port, "POST", f"/v1/webhooks/%74{SOURCE[1:]}",
                     transcript(pipeline.cid("t"), [("user", "x")]))
    assert r.status == 202, r
    recs = services.topic_records(pipeline.topic)
    camp = [x for x in recs if x["headers"].get("kind") == b"campaign"]
    assert [x["headers"].get("campaign-id") for x in camp] == [b"Abc"], camp
    hook = [x for x in recs if x["headers"].get("source") == SOURCE.encode()]
    assert len(hook) == 1, recs


# ------------------------------------------------------------ 413

def test_413_names_the_limit_applied(pipeline, services):
    """Under max_body_bytes (1 MiB) but over what Kafka takes: the 413
    names Kafka's limit and its figure, not max_body_bytes."""
    ingest = pipeline.start_ingest(max_body_bytes=1048576)
    body = json.dumps(transcript(pipeline.cid("big"), [("user", "")]))
    body = body.replace('""', '"' + "x" * (1_000_210 - len(body)) + '"')
    assert len(body) == 1_000_210
    r = ingest.post(body)
    assert r.status == 413, r
    m = _json_error(r, "413")["message"]
    assert "max_body_bytes (" not in m or "Kafka" in m, m
    assert "message.max.bytes" in m and "1000000" in m, m
    assert "995904" in m and "1000210" in m, m

    small = pipeline.start_ingest(max_body_bytes=10000)
    r = small.post(transcript(pipeline.cid("over"), [("user", "x" * 20000)]))
    assert r.status == 413, r
    m = _json_error(r, "413")["message"]
    assert "max_body_bytes (10000)" in m, m
