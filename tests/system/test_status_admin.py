# GET /status, the admin routes (pause, resume, log level) and their
# authorization on both daemons, and the access log with X-Request-Id on
# every answer. The figures of /status are checked against the topic's
# own watermarks and the rows in PostgreSQL; 401 is checked from a real
# non-loopback address of this machine.

import http.client
import json
import re
import subprocess
import threading
import time

import pytest

from harness import (SOURCE, free_port, http_request, ping_pong,
                     raw_request, wait_until)

TOKEN = "tok-3f9a1c77e2b04d5e"


def non_loopback_ipv4():
    """An IPv4 address of this machine that is not loopback, or None."""
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show",
                              "scope", "global"], capture_output=True,
                             text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for m in re.finditer(r"inet (\d+\.\d+\.\d+\.\d+)/", out):
        if not m.group(1).startswith("127."):
            return m.group(1)
    return None


def request(host, port, method, path, body=None, headers=None):
    """One request to host (not only 127.0.0.1); (status, headers, json or
    text)."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request(method, path, body=data, headers=headers or {})
        r = conn.getresponse()
        raw = r.read()
        hmap = {k.lower(): v for k, v in r.getheaders()}
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = raw.decode("utf-8", "replace")
        return r.status, hmap, doc
    finally:
        conn.close()


def status(port):
    st, _, doc = request("127.0.0.1", port, "GET", "/status")
    assert st == 200, (st, doc)
    return doc


def pipe(doc, name):
    for p in doc["pipelines"]:
        if p["name"] == name:
            return p
    raise AssertionError(f"no pipeline {name} in {doc['pipelines']}")


def rows(services, prefix):
    return services.scalar(
        "SELECT count(*) FROM messages WHERE conversation_id LIKE %s",
        (prefix + "%",))


def post_all(ingest, cids):
    for cid in cids:
        wid, body = ping_pong(cid)
        r = ingest.post(body, headers={"webhook-id": wid})
        assert r.status == 202, r


def token_file(tmp_path):
    path = tmp_path / "admin.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return str(path)


# ------------------------------------------------------------- the worker

def test_worker_status_matches_topic(pipeline, services):
    port = free_port()
    pipeline.start_worker(listen=f"127.0.0.1:{port}",
                          admin_token_file=token_file(pipeline.tmp),
                          kafka__sasl__password="hunter2-not-shown",
                          composer__headers="X-Api-Key: hunter2-header")
    ingest = pipeline.start_ingest()
    cids = [pipeline.cid() for _ in range(24)]
    post_all(ingest, cids)
    wait_until(lambda: rows(services, pipeline.prefix) == 48, 60,
               message="48 rows")
    marks = services.watermarks(pipeline.topic)
    assert sum(h for _, h in marks.values()) == 24, marks

    # Every pipeline (each reads the whole topic) ends with PostgreSQL's
    # stored offsets at the high watermarks; the others' records are
    # passed over and committed within about a second.
    def settled():
        doc = status(port)
        for p in doc["pipelines"]:
            got = {e["partition"]: (e["stored_offset"], e["high_watermark"],
                                    e["lag"]) for e in p["partitions"]}
            want = {part: (h, h, 0) for part, (_, h) in marks.items()}
            if got != want:
                return None
        return doc
    doc = wait_until(settled, 30, 0.2,
                     "every pipeline's stored offsets at the watermarks",
                     describe=lambda: status(port)["pipelines"])
    tp = pipe(doc, "transcript")
    assert tp["assigned"] == 4 and tp["paused"] is False, tp
    assert tp["group"] == f"{pipeline.group}.transcript", tp
    assert tp["batch"] is None, tp
    assert tp["invalidations_owed"] == 0, tp
    assert tp["lookups_in_flight"] == 0 and tp["composer_in_flight"] == 0
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$",
                    tp["last_commit"]), tp
    assert 0 <= tp["last_commit_age_s"] < 60, tp
    assert doc["paused"] is False and doc["log_level"] == "info", doc
    assert doc["pipelines_total"] == len(doc["pipelines"]) >= 4, doc

    cfg = doc["config"]
    assert cfg["topic"] == {"value": pipeline.topic, "runtime": False}
    assert cfg["log_level"] == {"value": "info", "runtime": True}
    assert cfg["batch_max"]["value"] == 2000, cfg["batch_max"]
    assert cfg["kafka.sasl.password"]["value"] == "(hidden)", cfg
    assert cfg["composer.headers"]["value"] == "(hidden)", cfg
    assert cfg["admin_token_file"]["value"].endswith("admin.token")
    text = json.dumps(doc)
    assert TOKEN not in text and "hunter2" not in text, "a secret shown"
    log = pipeline.worker.log_text()
    assert TOKEN not in log and "hunter2" not in log, "a secret logged"


def test_worker_pause_under_load_loses_nothing(pipeline, services):
    port = free_port()
    pipeline.start_worker(listen=f"127.0.0.1:{port}")
    ingest = pipeline.start_ingest()
    before = [pipeline.cid() for _ in range(40)]
    during = [pipeline.cid() for _ in range(120)]
    errors = []

    def load():
        try:
            post_all(ingest, during)
        except Exception as exc:  # reported below
            errors.append(exc)

    post_all(ingest, before)
    poster = threading.Thread(target=load)
    poster.start()
    time.sleep(0.2)  # the load is running
    st, hdrs, doc = request("127.0.0.1", port, "POST", "/admin/pause")
    assert st == 200 and doc["paused"] is True, (st, doc)
    assert hdrs.get("x-request-id"), hdrs
    # Each pipeline finishes its batch, commits it, then holds.
    wait_until(lambda: (lambda d: d["pipelines_paused"] ==
                        d["pipelines_total"])(status(port)), 30, 0.1,
               "every pipeline to hold its partitions")
    held = rows(services, pipeline.prefix)
    # Paused is not a failure: /readyz stays 200 and says so.
    r = http_request(port, "GET", "/readyz", timeout=5)
    assert r.status == 200 and r.json["paused"] is True, r
    poster.join(120)
    assert not errors, errors
    time.sleep(2.0)
    assert rows(services, pipeline.prefix) == held, \
        "rows landed while the worker was paused"
    tp = pipe(status(port), "transcript")
    assert tp["paused"] is True and tp["batch"] is None, tp
    assert tp["assigned"] == 4, "the partitions stay assigned while paused"
    # (Paused partitions fetch nothing, so their high watermarks are as
    # last fetched: the lag shown while paused is a floor.)
    assert "pause requested by 127.0.0.1" in pipeline.worker.log_text()

    st, _, doc = request("127.0.0.1", port, "POST", "/admin/resume")
    assert st == 200 and doc["paused"] is False, (st, doc)
    wait_until(lambda: rows(services, pipeline.prefix) == 320, 60,
               message="every record applied after the resume")
    dup = services.scalar(
        "SELECT count(*) - count(DISTINCT external_event_id) FROM messages"
        " WHERE conversation_id LIKE %s", (pipeline.prefix + "%",))
    assert dup == 0
    assert status(port)["paused"] is False

    # Stopped while paused: it drains and leaves as usual, and the
    # records sent meanwhile wait in Kafka for the next start.
    st, _, _ = request("127.0.0.1", port, "POST", "/admin/pause")
    assert st == 200
    wait_until(lambda: (lambda d: d["pipelines_paused"] ==
                        d["pipelines_total"])(status(port)), 30, 0.1,
               "every pipeline to hold its partitions again")
    late = [pipeline.cid() for _ in range(10)]
    post_all(ingest, late)
    t0 = time.monotonic()
    assert pipeline.worker.stop() == 0
    assert time.monotonic() - t0 < 20, "a paused worker was slow to stop"
    assert rows(services, pipeline.prefix) == 320
    pipeline.restart(pipeline.worker)
    wait_until(lambda: rows(services, pipeline.prefix) == 340, 60,
               message="the records sent before the stop, after restart")


def test_worker_log_level_at_once(pipeline):
    port = free_port()
    worker = pipeline.start_worker(listen=f"127.0.0.1:{port}")

    def cycle():
        for path in ("/admin/pause", "/admin/resume"):
            st, _, _ = request("127.0.0.1", port, "POST", path)
            assert st == 200
            time.sleep(0.5)

    # At info, pausing the partitions says nothing at debug level.
    cycle()
    assert " debug: " not in worker.log_text()
    st, _, doc = request("127.0.0.1", port, "PUT", "/admin/log-level",
                         "debug")
    assert (st, doc) == (200, {"log_level": "debug", "was": "info"})
    cycle()
    worker.wait_log(r" debug: paused \d+ partitions", 10)
    assert status(port)["config"]["log_level"]["value"] == "debug"
    st, _, doc = request("127.0.0.1", port, "PUT", "/admin/log-level",
                         '{"level": "warn"}')
    assert st == 200 and doc["log_level"] == "warn", doc
    n = worker.log_text().count(" debug: ")
    cycle()
    assert worker.log_text().count(" debug: ") == n
    st, _, doc = request("127.0.0.1", port, "PUT", "/admin/log-level",
                         "loud")
    assert st == 422 and doc["error"] == "bad_log_level", doc
    st, hdrs, doc = request("127.0.0.1", port, "GET", "/admin/log-level")
    assert st == 405 and hdrs["allow"] == "PUT", (st, hdrs)


def test_worker_admin_needs_loopback_or_token(pipeline):
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to "
                    "call the admin routes from")
    port = free_port()
    worker = pipeline.start_worker(listen=f"0.0.0.0:{port}",
                                   admin_token_file=token_file(pipeline.tmp))
    for method, path in (("GET", "/status"), ("POST", "/admin/pause"),
                         ("PUT", "/admin/log-level")):
        body = "debug" if method == "PUT" else None
        st, hdrs, doc = request(addr, port, method, path, body)
        assert st == 401, (path, st, doc)
        assert doc["error"] == "admin_token_required", doc
        assert hdrs["www-authenticate"] == "Bearer", hdrs
        assert hdrs.get("x-request-id"), hdrs
        st, _, doc = request(addr, port, method, path, body,
                             {"Authorization": "Bearer wrong-token"})
        assert (st, doc["error"]) == (401, "admin_token_invalid"), doc
    # A wrong token is refused from loopback too.
    st, _, doc = request("127.0.0.1", port, "GET", "/status", None,
                         {"Authorization": "Bearer " + TOKEN[:-1]})
    assert st == 401, doc
    assert status(port)["paused"] is False, "a refused pause took effect"
    # The probes stay open to anyone.
    st, _, _ = request(addr, port, "GET", "/healthz")
    assert st == 200
    good = {"Authorization": "Bearer " + TOKEN}
    st, _, doc = request(addr, port, "GET", "/status", None, good)
    assert st == 200 and doc["daemon"] == "sluice-worker", doc
    st, _, doc = request(addr, port, "POST", "/admin/pause", None, good)
    assert st == 200 and doc["paused"] is True
    st, _, doc = request(addr, port, "POST", "/admin/resume", None, good)
    assert st == 200 and doc["paused"] is False
    log = worker.log_text()
    assert re.search(rf'\[access\] {re.escape(addr)} "GET /status" 401 \d+ '
                     r'[\d.]+ms req=\S+ reason=admin_token_required', log), \
        log[-2000:]
    assert TOKEN not in log and "wrong-token" not in log


def test_worker_request_id_and_access_log(pipeline):
    port = free_port()
    worker = pipeline.start_worker(listen=f"127.0.0.1:{port}",
                                   access_log="json")
    st, hdrs, _ = request("127.0.0.1", port, "GET", "/healthz", None,
                          {"X-Request-Id": "probe-42"})
    assert st == 200 and hdrs["x-request-id"] == "probe-42"
    st, hdrs, doc = request("127.0.0.1", port, "GET", "/nowhere", None,
                            {"X-Request-Id": "bad id\twith blanks"})
    assert st == 404 and re.match(r"req_[0-9a-f]{32}$",
                                  hdrs["x-request-id"]), hdrs
    worker.wait_log(r'\[access\] \{.*"path":"/nowhere"', 10)
    entries = [json.loads(m) for m in re.findall(
        r"\[access\] (\{.*\})", worker.log_text())]
    e = [x for x in entries if x["path"] == "/nowhere"][-1]
    assert e["status"] == 404 and e["reason"] == "not_found", e
    assert e["request_id"] == hdrs["x-request-id"] and e["method"] == "GET"
    assert e["client"] == "127.0.0.1" and e["bytes"] > 0
    assert [x for x in entries if x["request_id"] == "probe-42"]


# ------------------------------------------------------------------ ingest

SECRET = "whsec_" + "c2x1aWNlLXN0YXR1cy10ZXN0LXNlY3JldC0zMmJ5dGVz"


def signed_source(name="signed"):
    return {f"source__{name}__kind": "transcript",
            f"source__{name}__signature": "standard-webhooks",
            f"source__{name}__secret": SECRET}


def test_ingest_status(pipeline, services):
    ingest = pipeline.start_ingest(admin_token_file=token_file(pipeline.tmp),
                                   max_inflight=777, **signed_source())
    for _ in range(5):
        wid, body = ping_pong(pipeline.cid())
        assert ingest.post(body, headers={"webhook-id": wid}).status == 202
    doc = status(ingest.port)
    assert doc["daemon"] == "sluice-ingest" and doc["kafka_up"] is True
    assert doc["inflight"] == 0 and doc["producer_queue"] == 0, doc
    assert doc["connections"] >= 1 and doc["draining"] is False, doc
    assert doc["limits"]["max_inflight"] == 777, doc["limits"]
    assert doc["limits"]["max_body_bytes"] == 1048576, doc["limits"]
    srcs = {s["name"]: s for s in doc["sources"]}
    assert srcs[SOURCE]["kind"] == "transcript"
    assert srcs[SOURCE]["signature"] == "none"
    assert srcs["signed"]["signature"] == "standard-webhooks"
    assert doc["config"]["max_inflight"] == {"value": 777, "runtime": True}
    assert doc["config"]["topic"] == {"value": pipeline.topic,
                                      "runtime": False}
    text = json.dumps(doc)
    assert SECRET not in text and SECRET[6:] not in text, "secret shown"
    assert TOKEN not in text
    # 5 records, all durable: the topic holds them.
    marks = services.watermarks(pipeline.topic)
    assert sum(h for _, h in marks.values()) == 5


def test_ingest_admin_needs_loopback_or_token(pipeline):
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to "
                    "call the admin routes from")
    port = free_port()
    ingest = pipeline.start_ingest(listen=f"0.0.0.0:{port}",
                                   admin_token_file=token_file(pipeline.tmp))
    for method, path in (("GET", "/status"), ("PUT", "/admin/log-level")):
        body = "debug" if method == "PUT" else None
        st, hdrs, doc = request(addr, port, method, path, body)
        assert (st, doc["error"]) == (401, "admin_token_required"), doc
        assert hdrs["www-authenticate"] == "Bearer" and hdrs["x-request-id"]
        st, _, doc = request(addr, port, method, path, body,
                             {"Authorization": "Bearer " + TOKEN + "x"})
        assert (st, doc["error"]) == (401, "admin_token_invalid"), doc
    assert " debug: " not in ingest.log_text()
    # Webhooks and probes are not admin routes.
    st, _, _ = request(addr, port, "GET", "/readyz")
    assert st == 200
    good = {"Authorization": "Bearer " + TOKEN}
    st, _, doc = request(addr, port, "GET", "/status", None, good)
    assert st == 200 and doc["daemon"] == "sluice-ingest", doc
    # The log level, at once: a queued record is logged at debug.
    st, _, doc = request(addr, port, "PUT", "/admin/log-level",
                         '{"level": "debug"}', good)
    assert (st, doc) == (200, {"log_level": "debug", "was": "info"}), doc
    wid, body = ping_pong(pipeline.cid())
    assert ingest.post(body, headers={"webhook-id": wid}).status == 202
    ingest.wait_log(rf" debug: \[[^\]]+\] queued {re.escape(wid)} ", 10)
    st, _, doc = request("127.0.0.1", port, "PUT", "/admin/log-level",
                         "info")
    assert st == 200 and doc["was"] == "debug"
    log = ingest.log_text()
    assert re.search(rf'\[access\] {re.escape(addr)} "PUT /admin/log-level"'
                     r' 401 \d+ [\d.]+ms req=\S+ reason=admin_token_invalid',
                     log), log[-3000:]
    assert TOKEN not in log


def test_ingest_access_log_and_request_id(pipeline, services):
    ingest = pipeline.start_ingest(**signed_source())
    cid = pipeline.cid()
    wid, body = ping_pong(cid)
    ours = "client-req-0001"
    cases = [
        # (what, path, body, headers, status, reason)
        ("accepted", f"/v1/webhooks/{SOURCE}", body,
         {"webhook-id": wid, "X-Request-Id": ours}, 202, None),
        ("unsigned", "/v1/webhooks/signed", body, {}, 401, "bad_signature"),
        ("unknown source", "/v1/webhooks/nope", body, {}, 404,
         "unknown_source"),
        ("schema", f"/v1/webhooks/{SOURCE}", {"conversation_id": 5}, {}, 422,
         "schema_violation"),
        ("no path", "/elsewhere", None, {}, 404, "not_found"),
    ]
    ids = {}
    for what, path, b, hdrs, want, reason in cases:
        r = http_request(ingest.port, "POST" if b is not None else "GET",
                         path, b, hdrs)
        assert r.status == want, (what, r)
        rid = r.headers.get("x-request-id")
        assert rid, (what, r.headers)
        ids[what] = rid
    assert ids["accepted"] == ours, "the client's sane id is kept"
    assert len(set(ids.values())) == len(ids), ids
    # An error libevent answers itself (sluice's JSON in its place) has an
    # id too, and its access line.
    r = raw_request(ingest.port, b"POST /v1/webhooks/tavus HTTP/1.1\r\n"
                    b"Host: x\r\nContent-Length: nope\r\n\r\n")
    assert r.status == 400 and r.headers.get("x-request-id"), r
    ingest.wait_log(r'\[access\] - "- -" 400 \d+ - req='
                    + re.escape(r.headers["x-request-id"])
                    + " reason=bad_request", 10)
    # A request id that is not sane is replaced.
    r = http_request(ingest.port, "GET", "/healthz",
                     headers={"X-Request-Id": "x" * 129})
    assert re.match(r"req_[0-9a-f]{32}$", r.headers["x-request-id"]), r

    log = ingest.log_text()
    for what, path, b, hdrs, want, reason in cases:
        line = next((ln for ln in log.splitlines()
                     if "[access]" in ln and
                     f"req={ids[what]}" in ln), None)
        assert line, f"no access line for {what} ({ids[what]}):\n{log[-3000:]}"
        assert re.search(r" info: \[access\] 127\.0\.0\.1 \"(POST|GET) "
                         + re.escape(path) + rf"\" {want} \d+ [\d.]+ms ",
                         line), line
        if reason:
            assert line.endswith(f"reason={reason}"), line
        else:
            assert "reason=" not in line, line
        if path.startswith("/v1/webhooks/"):
            assert f" source={path.rsplit('/', 1)[1]}" in line, line
    # The id the client sent is the one the Kafka record carries.
    recs = services.topic_records(pipeline.topic)
    assert [r["headers"].get("request-id") for r in recs] == [ours.encode()]


def test_ingest_access_log_json_and_off(pipeline):
    ingest = pipeline.start_ingest(access_log="json")
    r = http_request(ingest.port, "GET", "/nowhere")
    assert r.status == 404
    ingest.wait_log(r"\[access\] \{", 10)
    e = [json.loads(m) for m in re.findall(r"\[access\] (\{.*\})",
                                           ingest.log_text())][-1]
    assert e["path"] == "/nowhere" and e["status"] == 404, e
    assert e["reason"] == "not_found" and e["client"] == "127.0.0.1", e
    assert e["request_id"] == r.headers["x-request-id"], e
    off = pipeline.start_ingest(access_log="off")
    assert http_request(off.port, "GET", "/healthz").status == 200
    time.sleep(0.3)
    assert "[access]" not in off.log_text()


def test_worker_status_before_any_assignment(pipeline):
    # Asked at once, before the group assigned anything: the pipelines
    # are there with no partitions, and nothing is made up.
    port = free_port()
    worker = pipeline.start_worker(wait=False, listen=f"127.0.0.1:{port}",
                                   topic_partitions=0)
    wait_until(lambda: request("127.0.0.1", port, "GET", "/healthz")[0]
               == 200, 30, 0.1, "the endpoint to answer")
    doc = status(port)
    for p in doc["pipelines"]:
        assert p["last_commit"] is None and p["batch"] is None, p
        assert p["partitions"] == [] or all(
            e["stored_offset"] is None for e in p["partitions"]), p
    worker.assert_alive()
