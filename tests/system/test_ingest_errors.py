# Bad requests get a precise status and a JSON error, and none of them
# reaches Kafka.  Boundaries of what is accepted.

import json

from harness import SOURCE, raw_request, transcript

MAX_BODY = 65536


def _valid(cid="c-x"):
    return transcript(cid, [("user", "Hi")])


def _deep(n):
    return ('{"conversation_id":"c-deep","event_type":"e","properties":'
            + "[" * n + "]" * n + "}")


def _padded(cid, size):
    """A valid callback of exactly `size` bytes."""
    body = transcript(cid, [("user", "")])
    base = len(json.dumps(body).encode())
    body["properties"]["transcript"][0]["content"] = "x" * (size - base)
    data = json.dumps(body).encode()
    assert len(data) == size
    return data


def _raw_post(path, body, headers):
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode() + body


# (name, method, path, body, content type, extra headers, status, JSON path)
# A JSON path ending in "*" is a prefix.
CASES = [
    ("malformed JSON", "POST", f"/v1/webhooks/{SOURCE}",
     b'{"conversation_id": "c-1", "event_type": ', "application/json", {},
     400, None),
    ("not JSON at all", "POST", f"/v1/webhooks/{SOURCE}",
     b"conversation_id=c-1", "application/json", {}, 400, None),
    ("trailing garbage", "POST", f"/v1/webhooks/{SOURCE}",
     json.dumps(_valid()).encode() + b" }", "application/json", {}, 400,
     None),
    ("empty body", "POST", f"/v1/webhooks/{SOURCE}", b"",
     "application/json", {}, (400, 411), None),
    ("nested 30000 deep", "POST", f"/v1/webhooks/{SOURCE}",
     _deep(30000).encode(), "application/json", {}, (400, 422), None),
    ("missing conversation_id", "POST", f"/v1/webhooks/{SOURCE}",
     {"event_type": "application.transcription_ready",
      "properties": {"transcript": []}}, "application/json", {}, 422,
     "$.conversation_id"),
    ("conversation_id a number", "POST", f"/v1/webhooks/{SOURCE}",
     {"conversation_id": 42, "event_type": "system.shutdown"},
     "application/json", {}, 422, "$.conversation_id"),
    ("conversation_id empty", "POST", f"/v1/webhooks/{SOURCE}",
     {"conversation_id": "", "event_type": "system.shutdown"},
     "application/json", {}, 422, "$.conversation_id"),
    ("conversation_id too long", "POST", f"/v1/webhooks/{SOURCE}",
     {"conversation_id": "c" * 257, "event_type": "system.shutdown"},
     "application/json", {}, 422, "$.conversation_id"),
    ("no event_type nor type", "POST", f"/v1/webhooks/{SOURCE}",
     {"conversation_id": "c-1"}, "application/json", {}, 422, None),
    ("body is an array", "POST", f"/v1/webhooks/{SOURCE}",
     [_valid()], "application/json", {}, 422, None),
    ("transcript not an array", "POST", f"/v1/webhooks/{SOURCE}",
     {"conversation_id": "c-1", "event_type": "x",
      "properties": {"transcript": "Hi"}}, "application/json", {}, 422,
     "$.properties.transcript*"),
    ("transcript entry without role", "POST", f"/v1/webhooks/{SOURCE}",
     {"conversation_id": "c-1", "event_type": "x",
      "properties": {"transcript": [{"role": "user", "content": "a"},
                                    {"content": "b"}]}},
     "application/json", {}, 422, "$.properties.transcript*"),
    ("content not a string", "POST", f"/v1/webhooks/{SOURCE}",
     {"conversation_id": "c-1", "event_type": "x",
      "properties": {"transcript": [{"role": "user", "content": 7}]}},
     "application/json", {}, 422, "$.properties.transcript*"),
    ("text/plain", "POST", f"/v1/webhooks/{SOURCE}", _valid(),
     "text/plain", {}, 415, None),
    ("form encoded", "POST", f"/v1/webhooks/{SOURCE}", _valid(),
     "application/x-www-form-urlencoded", {}, 415, None),
    ("no content type", "POST", f"/v1/webhooks/{SOURCE}", _valid(),
     None, {}, 415, None),
    ("unknown source", "POST", "/v1/webhooks/nosuchsource", _valid(),
     "application/json", {}, 404, None),
    ("no source", "POST", "/v1/webhooks/", _valid(),
     "application/json", {}, 404, None),
    ("path past the source", "POST", f"/v1/webhooks/{SOURCE}/extra",
     _valid(), "application/json", {}, 404, None),
    ("wrong prefix", "POST", f"/v2/webhooks/{SOURCE}", _valid(),
     "application/json", {}, 404, None),
    ("root", "POST", "/", _valid(), "application/json", {}, 404, None),
    ("GET on the webhook path", "GET", f"/v1/webhooks/{SOURCE}", None,
     None, {}, 405, None),
    ("PUT on the webhook path", "PUT", f"/v1/webhooks/{SOURCE}", _valid(),
     "application/json", {}, 405, None),
    ("DELETE on the webhook path", "DELETE", f"/v1/webhooks/{SOURCE}", None,
     None, {}, 405, None),
    ("one byte too large", "POST", f"/v1/webhooks/{SOURCE}",
     _padded("c-big", MAX_BODY + 1), "application/json", {}, 413, None),
    ("far too large", "POST", f"/v1/webhooks/{SOURCE}",
     _padded("c-huge", 4 * MAX_BODY), "application/json", {}, 413, None),
]


def _check_error(r, want_status, want_path):
    """A list of what is wrong with error response r."""
    wrong = []
    ok = want_status if isinstance(want_status, tuple) else (want_status,)
    if r.status not in ok:
        wrong.append(f"status {r.status}, expected {want_status}")
    ctype = r.headers.get("content-type", "")
    if not ctype.startswith("application/json"):
        wrong.append(f"Content-Type {ctype!r}, expected application/json")
    body = r.json
    if not isinstance(body, dict):
        wrong.append("body is not a JSON object")
        return wrong
    if not (isinstance(body.get("error"), str) and body["error"]):
        wrong.append(f"no \"error\" code in {body}")
    if not isinstance(body.get("message"), str):
        wrong.append(f"no \"message\" in {body}")
    if want_path is not None:
        got = body.get("path")
        if want_path.endswith("*"):
            good = isinstance(got, str) and got.startswith(want_path[:-1])
        else:
            good = got == want_path
        if not good:
            wrong.append(f"path {got!r}, expected {want_path!r}")
    if r.status == 405 and "POST" not in r.headers.get("allow", ""):
        wrong.append(f"405 without an Allow header naming POST: "
                     f"{r.headers.get('allow')!r}")
    return wrong


def test_rejections_reach_no_record(pipeline, services):
    ingest = pipeline.start_ingest(max_body_bytes=MAX_BODY)
    failures = []
    for name, method, path, body, ctype, hdrs, status, jpath in CASES:
        try:
            r = ingest.request(method, path, body, headers=hdrs,
                               content_type=ctype, timeout=10)
        except OSError as exc:
            failures.append(f"{name}: {method} {path}: {exc!r}")
            ingest.assert_alive()
            continue
        wrong = _check_error(r, status, jpath)
        if wrong:
            failures.append(f"{name}: {method} {path}: " + "; ".join(wrong)
                            + f"  [got {r!r}]")
        ingest.assert_alive()

    # Requests http.client will not send.
    raw_cases = [
        ("no Content-Length, no body", _raw_post(
            f"/v1/webhooks/{SOURCE}", b"",
            {"Content-Type": "application/json", "Connection": "close"}),
         411),
    ]
    for name, data, status in raw_cases:
        try:
            r = raw_request(ingest.port, data, timeout=10)
        except OSError as exc:
            failures.append(f"{name}: {exc!r}")
            continue
        wrong = _check_error(r, status, None)
        if wrong:
            failures.append(f"{name}: " + "; ".join(wrong) + f" [got {r!r}]")
        ingest.assert_alive()

    assert not failures, (f"{len(failures)} wrong answers:\n  "
                          + "\n  ".join(failures))
    assert ingest.request("GET", "/healthz").status == 200
    n = services.topic_count(pipeline.topic)
    assert n == 0, f"rejected requests left {n} records in {pipeline.topic}"


def test_declared_length_far_over_limit(pipeline, services):
    """A Content-Length far over max_body_bytes (beyond 4x) is refused from
    the headers alone, before any body is buffered. libevent 2.1 answers
    these itself; sluice replaces its HTML page with its own JSON before it
    is sent (docs/architecture.md, checked in test_ingest_hygiene); bodies
    up to 4x the limit get the JSON 413 of the request's handler, checked
    in test_rejections_reach_no_record."""
    ingest = pipeline.start_ingest(max_body_bytes=MAX_BODY)
    for declared in (100 * MAX_BODY, 2**31):
        r = raw_request(ingest.port, _raw_post(
            f"/v1/webhooks/{SOURCE}", b"",
            {"Content-Type": "application/json",
             "Content-Length": str(declared)}), timeout=10)
        assert r.status == 413, f"Content-Length {declared}: got {r!r}"
        ingest.assert_alive()
    assert ingest.request("GET", "/healthz").status == 200
    assert services.topic_count(pipeline.topic) == 0


def test_invalid_utf8_is_malformed(pipeline, services):
    """JSON is UTF-8 (RFC 8259); a body that is not would poison the
    database insert downstream, so it is rejected at the door."""
    ingest = pipeline.start_ingest()
    body = (b'{"conversation_id":"c-utf8","event_type":"'
            b'application.transcription_ready","properties":{"transcript":'
            b'[{"role":"user","content":"caf\xe9 \xff\xfe"}]}}')
    r = ingest.post(body)
    wrong = _check_error(r, 400, None)
    assert not wrong, f"invalid UTF-8: {'; '.join(wrong)} [got {r!r}]"
    assert services.topic_count(pipeline.topic) == 0


def test_boundaries_accepted(pipeline, services):
    """What is allowed: a body of exactly max_body_bytes, a JSON content
    type with parameters or in capitals, extra unknown fields."""
    ingest = pipeline.start_ingest(max_body_bytes=MAX_BODY)
    accepted = []
    failures = []

    def expect_202(name, body, **kw):
        r = ingest.post(body, **kw)
        if r.status != 202:
            failures.append(f"{name}: expected 202, got {r!r}")
        else:
            accepted.append(name)

    expect_202("exactly max_body_bytes", _padded(pipeline.cid("max"),
                                                 MAX_BODY))
    expect_202("charset parameter", _valid(pipeline.cid("cs")),
               content_type="application/json; charset=utf-8")
    expect_202("capitals", _valid(pipeline.cid("caps")),
               content_type="Application/JSON")
    extra = _valid(pipeline.cid("extra"))
    extra["unknown_field"] = {"nested": [1, 2, 3]}
    expect_202("unknown fields", extra)
    expect_202("conversation_id of 256 characters",
               {"conversation_id": "c" * 256, "event_type": "system.shutdown"})
    assert not failures, "\n".join(failures)
    n = services.topic_count(pipeline.topic)
    assert n == len(accepted), f"{len(accepted)} accepted, {n} records"


def test_a_source_goes_unsigned_only_when_configured(pipeline, tmp_path):
    """The daemon refuses to start with a source that says nothing of its
    signature, or that names a scheme but gives no usable secret; it names
    the source and the setting, never the secret, and leaves the port
    free. `signature = none` is the one way to accept unsigned requests."""
    import socket
    import subprocess

    from harness import BUILD_DIR, _format_config
    base = pipeline.ingest_settings()
    listen = base["listen"]
    host, port = listen.rsplit(":", 1)
    bad = {
        "no signature setting": (
            {"source.nosig.kind": "transcript"},
            "source nosig: signature must be set"),
        "standard-webhooks without a secret": (
            {"source.nosecret.kind": "transcript",
             "source.nosecret.signature": "standard-webhooks"},
            "source nosecret: signature standard-webhooks needs secret"),
        "empty secret": (
            {"source.empty.kind": "transcript",
             "source.empty.signature": "standard-webhooks",
             "source.empty.secret": ""},
            "source empty:"),
        "secret that is not whsec_ base64": (
            {"source.garbled.kind": "transcript",
             "source.garbled.signature": "standard-webhooks",
             "source.garbled.secret": "whsec_%%%not-base64%%%"},
            "source garbled:"),
    }
    for what, (over, want) in bad.items():
        cfg = tmp_path / "bad.conf"
        cfg.write_text(_format_config(dict(base, **over)))
        r = subprocess.run([str(BUILD_DIR / "sluice-ingest"), "-c", str(cfg)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode != 0, f"{what}: started:\n{r.stderr[-2000:]}"
        assert want in r.stderr, f"{what}: {want!r} not in:\n{r.stderr}"
        assert "not-base64" not in r.stderr, f"{what}: secret in the log"
        with socket.socket() as s:
            s.settimeout(1)
            assert s.connect_ex((host, int(port))) != 0, (
                f"{what}: something listens on {listen}")
    # The explicit way: an unsigned source starts and accepts.
    ingest = pipeline.start_ingest(source__open__kind="transcript",
                                   source__open__signature="none")
    cid = pipeline.cid("open")
    r = ingest.post(transcript(cid, [("user", "Hi")]), source="open")
    assert r.status == 202, r
