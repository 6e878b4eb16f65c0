# The front door against a hostile client: descriptor exhaustion, request
# smuggling headers, HEAD on a kept-alive connection, records Kafka would
# refuse, NULs and repeated keys, byte limits the worker enforces.

import http.client
import json
import resource
import socket
import time

from harness import raw_request, transcript, wait_until

READY = "application.transcription_ready"


def _cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])   # utime + stime
    return ticks / 100.0


def _nofile(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    return apply


def test_out_of_descriptors_does_not_spin(pipeline, services):
    """1,100 idle connections against nofile 256: no busy loop, a bounded
    log, and /healthz answers again once they are gone."""
    s = pipeline.ingest_settings(request_timeout_s=3)
    cfg = pipeline._write("ingest-fd.conf", s)
    from harness import IngestDaemon
    port = int(s["listen"].rsplit(":", 1)[1])
    d = IngestDaemon(cfg, pipeline.tmp / "ingest-fd.log", pipeline.env, port)
    d.preexec = _nofile(256)
    pipeline.daemons.append(d)
    d.start()
    socks = []
    try:
        for _ in range(1100):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            socks.append(c)
        time.sleep(1.0)
        cpu0 = _cpu_seconds(d.pid)
        time.sleep(2.0)
        used = _cpu_seconds(d.pid) - cpu0
        assert used < 0.6, f"sluice-ingest used {used:.2f} s of CPU in 2 s "\
            "while out of descriptors (a busy accept loop)"
        d.assert_alive()
    finally:
        for c in socks:
            c.close()
    def healthy():
        try:
            from harness import http_request
            return http_request(port, "GET", "/healthz", timeout=2).status \
                == 200
        except OSError:
            return False
    wait_until(healthy, 15, message="/healthz to answer after the flood")
    log = d.log_text()
    assert len(log) < 200_000, f"log grew to {len(log)} bytes"
    assert log.count("accept:") < 20, \
        f"{log.count('accept:')} accept lines: not rate limited"
    assert "accept:" in log, "the descriptor exhaustion was not logged"


def test_conflicting_content_length_refused(pipeline, services):
    ingest = pipeline.start_ingest()
    cid = pipeline.cid("smuggle")
    body = json.dumps(transcript(cid, [("user", "x")])).encode()
    req = (b"POST /v1/webhooks/tavus HTTP/1.1\r\nHost: x\r\n"
           b"Content-Type: application/json\r\n"
           b"Content-Length: %d\r\nContent-Length: 5\r\n\r\n" % len(body)
           ) + body
    r = raw_request(ingest.port, req)
    assert r.status == 400, f"two Content-Length headers: {r!r}"
    assert r.headers.get("connection", "").lower() == "close", r.headers
    req = (b"POST /v1/webhooks/tavus HTTP/1.1\r\nHost: x\r\n"
           b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
           b"Content-Length: %d\r\n\r\n%x\r\n" % (len(body), len(body))
           ) + body + b"\r\n0\r\n\r\n"
    r = raw_request(ingest.port, req)
    assert r.status == 400, f"Content-Length beside chunked: {r!r}"
    assert services.topic_count(pipeline.topic) == 0, "a record was published"


def test_head_has_no_body_on_keep_alive(pipeline, services):
    ingest = pipeline.start_ingest()
    conn = http.client.HTTPConnection("127.0.0.1", ingest.port, timeout=10)
    try:
        for path in ("/healthz", "/metrics", "/readyz"):
            conn.request("HEAD", path)
            r = conn.getresponse()
            assert r.read() == b"", f"HEAD {path} carried a body"
            assert int(r.getheader("content-length")) > 0, r.getheaders()
            conn.request("GET", "/healthz")
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200 and json.loads(body)["status"] == "ok", (
                f"the GET after HEAD {path} was corrupted: {body!r}")
    finally:
        conn.close()
    m = ingest.request("GET", "/metrics").body.decode()

    def count(route, code):
        line = [x for x in m.splitlines() if x.startswith(
            f'sluice_ingest_responses_total{{route="{route}",code="{code}"}}')]
        return int(line[0].split()[-1]) if line else 0
    # HEAD and GET of /healthz and /readyz: probes; HEAD of /metrics and
    # the GET before this one: scrapes.
    assert count("probe", "200") >= 5, m[:800]
    assert count("metrics", "200") >= 1, m[:800]
    assert 'code="other"' not in m, m[:800]


def test_over_kafka_record_limit_is_413(pipeline, services):
    """Under max_body_bytes (1 MiB) but over Kafka's 1,000,000 bytes: a
    permanent 413, not a 503 the sender would retry forever."""
    ingest = pipeline.start_ingest(max_body_bytes=1048576)
    cid = pipeline.cid("big")
    body = transcript(cid, [("user", "x" * 1_000_500)])
    r = ingest.post(body)
    assert r.status == 413, f"expected 413, got {r!r}"
    assert "retry-after" not in r.headers, r.headers
    small = ingest.post(transcript(cid, [("user", "x" * 900_000)]))
    assert small.status == 202, f"900 kB refused: {small!r}"


def test_nul_and_repeated_keys_refused(pipeline, services):
    ingest = pipeline.start_ingest()
    victim = pipeline.cid("victim")
    cases = [
        '{"conversation_id": "%s\\u0000x", "event_type": "x"}' % victim,
        ('{"conversation_id": "%s", "event_type": "%s", "properties": '
         '{"transcript": [{"role": "user", "content": "a\\u0000b"}]}}'
         % (victim, READY)),
        '{"conversation_id": "%s", "conversation_id": "other",'
        ' "event_type": "x"}' % victim,
        ('{"conversation_id": "%s", "event_type": "%s", "properties": '
         '{"transcript": [{"role": "user", "role": "system", '
         '"content": "c"}]}}' % (victim, READY)),
    ]
    for body in cases:
        r = ingest.post(body)
        assert r.status in (400, 422), f"{body}: {r!r}"
        assert r.json and r.json.get("message"), r
    ok = ingest.post('{"conversation_id": "%s", "event_type": "x",'
                     ' "note": "literal \\\\u0000 text"}' % victim)
    assert ok.status == 202, f"an escaped backslash refused: {ok!r}"
    assert services.topic_count(pipeline.topic) == 1


def test_byte_limits_match_the_worker(pipeline, services):
    """What ingest accepts, the worker stores: a 65-character role or a
    400-byte conversation id is refused at the door, not dead-lettered."""
    pipeline.start_worker()
    ingest = pipeline.start_ingest()
    long_cid = pipeline.prefix + "é" * 200
    r = ingest.post(transcript(long_cid, [("user", "x")]))
    assert r.status == 422, f"400-byte conversation id: {r!r}"
    cid = pipeline.cid("role")
    r = ingest.post(transcript(cid, [("r" * 65, "x")]))
    assert r.status == 422, f"65-byte role: {r!r}"
    assert r.json["path"] == "$.properties.transcript[0].role", r.json
    r = ingest.post(transcript(cid, [(10**15, "user", "x")]))
    assert r.status == 422, f"id 1e15: {r!r}"
    fits = pipeline.cid("fits")
    r = ingest.post(transcript(fits, [("i" * 256, "r" * 64, "x")]))
    assert r.status == 202, r
    pipeline.wait_caught_up()
    assert pipeline.message_count(fits) == 1
    assert services.dlq_count(pipeline.topic) == 0, "dead-lettered"


def _metric(ingest, name):
    text = ingest.request("GET", "/metrics").body.decode()
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{") and \
                line.split(" ")[0] == name:
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text[:2000]}")


def test_rate_limit_per_source(pipeline, services):
    """The 001 seed's 100 requests/min, as configuration: the burst goes
    through, the next gets 429 with Retry-After, another source is not
    affected."""
    ingest = pipeline.start_ingest(
        source__tavus__rate="100/min", source__other__kind="transcript",
        source__other__signature="none")
    conn = http.client.HTTPConnection("127.0.0.1", ingest.port, timeout=10)
    statuses = []
    t0 = time.monotonic()
    # 130 requests: even at 30 ms per acknowledged request the refill (one
    # token every 0.6 s) cannot keep up with them.
    for i in range(130):
        body = json.dumps(transcript(pipeline.cid(f"r{i}"), [("user", "x")]))
        conn.request("POST", "/v1/webhooks/tavus", body,
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        statuses.append((r.status, r.getheader("retry-after")))
    elapsed = time.monotonic() - t0
    conn.close()
    assert [s for s, _ in statuses[:100]] == [202] * 100, statuses[:100]
    accepted = sum(1 for s, _ in statuses if s == 202)
    # the bucket refills one every 0.6 s while the burst is sent
    assert accepted <= 100 + int(elapsed / 0.6) + 1, (accepted, elapsed)
    limited = [x for x in statuses if x[0] != 202]
    assert limited and all(s == 429 for s, _ in limited), limited
    assert all(ra and 1 <= int(ra) <= 2 for _, ra in limited), limited
    r = ingest.post(transcript(pipeline.cid("o"), [("user", "x")]),
                    source="other")
    assert r.status == 202, f"another source was limited: {r!r}"
    assert _metric(ingest, 'sluice_ingest_rate_limited_total{source="tavus"}'
                   ) == len(limited)
    assert services.topic_count(pipeline.topic) == accepted + 1


def test_sighup_reloads_sources_keeping_connections(pipeline, services):
    import signal
    ingest = pipeline.start_ingest()
    conn = http.client.HTTPConnection("127.0.0.1", ingest.port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().read()
        r = ingest.post(transcript(pipeline.cid("a"), [("user", "x")]),
                        source="added")
        assert r.status == 404, r
        cfg = ingest.config.read_text()
        ingest.config.write_text(
            cfg + "source.added.kind = transcript\n"
                  "source.added.signature = none\n")
        ingest.signal(signal.SIGHUP)
        wait_until(lambda: ingest.post(
            transcript(pipeline.cid("b"), [("user", "x")]),
            source="added").status == 202, 10,
            message="the added source to be served after SIGHUP")
        # the kept-alive connection still works
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        # a broken file keeps the running configuration
        ingest.config.write_text(cfg + "source.bad.kind = nonsense\n")
        ingest.signal(signal.SIGHUP)
        wait_until(lambda: "reload of" in ingest.log_text(), 10,
                   message="the failed reload to be logged")
        r = ingest.post(transcript(pipeline.cid("c"), [("user", "x")]),
                        source="added")
        assert r.status == 202, f"a bad reload dropped the config: {r!r}"
        assert _metric(ingest,
                       'sluice_ingest_reloads_total{result="failed"}') == 1
    finally:
        conn.close()
        ingest.config.write_text(cfg)


def test_kafka_outage_under_load_answers_by_the_deadline(pipeline, services):
    """Every request during an outage is answered 503 by its deadline
    (a timer per request), not 8-15 s later."""
    import threading
    deadline_ms = 2000
    ingest = pipeline.start_ingest(delivery_timeout_ms=deadline_ms)
    assert ingest.post(transcript(pipeline.cid("w"), [("user", "x")])
                       ).status == 202
    try:
        services.stop_kafka()
        times, errors = [], []

        def client(i):
            c = http.client.HTTPConnection("127.0.0.1", ingest.port,
                                           timeout=30)
            try:
                for k in range(10):
                    body = json.dumps(transcript(pipeline.cid(f"o{i}-{k}"),
                                                 [("user", "x")]))
                    t0 = time.monotonic()
                    c.request("POST", "/v1/webhooks/tavus", body,
                              {"Content-Type": "application/json"})
                    r = c.getresponse()
                    r.read()
                    times.append((time.monotonic() - t0, r.status))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                c.close()
        threads = [threading.Thread(target=client, args=(i,))
                   for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:3]
        assert all(s == 503 for _, s in times), sorted(set(
            s for _, s in times))
        worst = max(t for t, _ in times)
        # 2 s of slack for 20 Python threads on a loaded box; the defect
        # this guards against answered after 8-15 s.
        assert worst < deadline_ms / 1000 + 2.0, (
            f"slowest 503 after {worst:.2f} s, deadline {deadline_ms} ms")
    finally:
        services.start_kafka()


def test_topic_record_limit_is_413(pipeline, services):
    """A topic created with a smaller max.message.bytes than the producer's:
    a body over it is 413 at the door, not a 503 retried forever."""
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": services.brokers,
                         "log_level": 0})
    fs = admin.create_topics([NewTopic(pipeline.topic, 4, 1, config={
        "max.message.bytes": "100000"})])
    fs[pipeline.topic].result(30)
    ingest = pipeline.start_ingest(max_body_bytes=1048576)
    # asked at start without blocking the loop: 100,000 less the room kept
    # for key and headers
    ingest.wait_log(r"bodies over 95904 bytes get 413", timeout=30)
    big = ingest.post(transcript(pipeline.cid("big"), [("user", "x" * 150_000)]))
    assert big.status == 413, f"over the topic's limit: {big!r}"
    ok = ingest.post(transcript(pipeline.cid("ok"), [("user", "x" * 50_000)]))
    assert ok.status == 202, ok
    assert services.topic_count(pipeline.topic) == 1


def test_readyz_unready_while_inflight_is_full(pipeline, services):
    """/readyz answers 503 while max_inflight records wait for Kafka (the
    broker up, the producer holding them back: linger.ms 8 s), a further
    POST gets 503 at once, the waiting ones get 503 at their deadline,
    never a 202. Their records still count until Kafka reports on them
    (the producer's queue is what max_inflight bounds); then /readyz is
    200 again and the late reports are counted."""
    import threading
    deadline_ms = 3000
    ingest = pipeline.start_ingest(max_inflight=3,
                                   delivery_timeout_ms=deadline_ms,
                                   kafka__linger__ms=8000,
                                   kafka__message__timeout__ms=60000)
    results, errors = [], []

    def send(i):
        try:
            results.append(ingest.post(
                transcript(pipeline.cid(f"w{i}"), [("user", "x")]),
                timeout=30).status)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    r = wait_until(lambda: (lambda r: r.status == 503 and r)(
                       ingest.request("GET", "/readyz")), deadline_ms / 1000,
                   0.05, "/readyz to answer 503 with three in flight")
    assert r.json["queue"] == {
        "ok": False, "inflight": 3, "max_inflight": 3,
        "error": "max_inflight requests wait for Kafka"}, r.json
    assert r.json["kafka"] == {"ok": True}, r.json
    assert r.json["status"] == "unavailable", r.json
    over = ingest.post(transcript(pipeline.cid("x"), [("user", "x")]))
    assert over.status == 503, over
    assert over.json["error"] == "unavailable", over.json
    assert "in flight" in over.json["message"], over.json
    assert time.monotonic() - t0 < deadline_ms / 1000, (
        "the fourth POST was not refused before the deadline")
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert results == [503] * 3, f"answers to the unconfirmed: {results}"
    wait_until(lambda: ingest.request("GET", "/readyz").status == 200, 30,
               0.1, "/readyz to be 200 once Kafka reported on the records",
               describe=lambda: ingest.request("GET", "/readyz"))
    assert ingest.request("GET", "/readyz").json["queue"]["inflight"] == 0
    assert _metric(ingest, "sluice_ingest_late_deliveries_total") == 3
    assert services.topic_count(pipeline.topic) == 3
