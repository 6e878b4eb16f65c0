# The worker's own HTTP endpoint (listen): /healthz, /readyz and /metrics
# against what really landed in PostgreSQL, parsed with a real Prometheus
# parser; 404 and 405; answers while idle and while a batch waits on its
# lead-context lookups. The faults (Redis, PostgreSQL down) are in
# test_worker_http_faults.py: they need a private stack.

import time

from prometheus_client.parser import text_string_to_metric_families

from campaign_util import (add_inbox, batch, campaign_ingest, http_worker,
                           msg, post_batch, uid, wait_rows)
from harness import free_port, http_request, transcript, wait_until

try:
    from confluent_kafka import Producer
except ImportError:  # pragma: no cover - harness already reports it
    Producer = None


def http_listen():
    port = free_port()
    return port, f"127.0.0.1:{port}"


def scrape(port):
    """{(name, frozenset(labels)): value} of every sample, and the
    families, parsed by prometheus_client (a malformed exposition
    raises)."""
    r = http_request(port, "GET", "/metrics", timeout=5)
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    fams = list(text_string_to_metric_families(r.body.decode("utf-8")))
    samples = {}
    for f in fams:
        for s in f.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, {f.name: f for f in fams}


def val(samples, name, **labels):
    key = (name, frozenset((k, str(v)) for k, v in labels.items()))
    assert key in samples, f"{name}{labels} not in the exposition: " \
        f"{sorted(k[0] for k in samples)[:80]}"
    return samples[key]


def ready(port):
    r = http_request(port, "GET", "/readyz", timeout=5)
    return r if r.status == 200 else None


def test_probes_and_metrics_match_postgres(pipeline, services):
    port, listen = http_listen()
    worker = pipeline.start_worker(listen=listen)
    ingest = pipeline.start_ingest()

    r = http_request(port, "GET", "/healthz", timeout=5)
    assert (r.status, r.json) == (200, {"status": "ok"}), r
    r = wait_until(lambda: ready(port), 15, 0.1,
                   "GET /readyz to answer 200 with every service up",
                   describe=lambda: http_request(port, "GET", "/readyz"))
    assert r.json["status"] == "ok", r.json
    for k in ("postgres", "redis", "kafka"):
        assert r.json[k]["ok"] is True and "error" not in r.json[k], r.json
    assert r.json["kafka"]["assigned"] == 4, r.json

    # Idle, the loop waits on the consumer queue's wake-up, not in a
    # blocking poll: every answer comes at once.
    slow = []
    for _ in range(30):
        r = http_request(port, "GET", "/healthz", timeout=5)
        assert r.status == 200
        if r.elapsed > 0.05:
            slow.append(round(r.elapsed * 1000))
        time.sleep(0.01)
    # (A blocking 100 ms poll made the median about 90 ms; a loaded box
    # makes a few answers slow, not the median.)
    assert len(slow) <= 15, f"idle /healthz answers over 50 ms: {slow} ms"

    # N transcripts of M entries through a real ingest.
    N, M = 12, 3
    cids = [pipeline.cid() for _ in range(N)]
    for i, cid in enumerate(cids):
        body = transcript(cid, [(f"{cid}-e{k}", "user", f"text {i}.{k}")
                                for k in range(M)])
        assert ingest.post(body).status == 202
    pipeline.wait_caught_up()
    in_pg = pipeline.message_count()
    assert in_pg == N * M, in_pg

    def counted():
        s, _ = scrape(port)
        return s if val(s, "sluice_worker_records_total") >= N else None
    s = wait_until(counted, 10, 0.1, "sluice_worker_records_total to reach N")
    batches = worker.log_text().count("batch of ")
    assert val(s, "sluice_worker_records_total") == N
    assert val(s, "sluice_worker_batches_total") == batches > 0
    assert val(s, "sluice_worker_rows_written_total",
               kind="transcript") == in_pg
    assert val(s, "sluice_worker_duplicates_total") == 0
    for reason in ("unknown_kind", "empty", "invalid", "refused_by_postgres"):
        assert val(s, "sluice_worker_dead_letters_total", reason=reason) == 0
    assert val(s, "sluice_worker_retries_total") == 0
    assert val(s, "sluice_worker_batch_records_count") == batches
    assert val(s, "sluice_worker_batch_records_sum") == N
    assert val(s, "sluice_worker_batch_records_bucket", le="+Inf") == batches
    assert val(s, "sluice_worker_batch_duration_seconds_count") == batches
    assert val(s, "sluice_worker_rebalances_total", type="assign") >= 1
    # Two templates per conversation (invalidate_keys' default), each
    # batch's set made unique: at least one per conversation.
    assert val(s, "sluice_worker_invalidations_total") >= N
    assert val(s, "sluice_worker_invalidations_owed") == 0
    marks = services.watermarks(pipeline.topic)
    assert len(marks) == 4
    for p, (lo, hi) in marks.items():
        # Caught up: every partition's lag is 0, the empty ones included.
        wait_until(lambda p=p: val(scrape(port)[0],
                                   "sluice_worker_partition_lag",
                                   topic=pipeline.topic, partition=p) == 0,
                   10, 0.2,
                   f"partition {p}'s lag to be 0 (high watermark {hi})")

    # The same transcripts again: nothing new lands, all are duplicates.
    for i, cid in enumerate(cids[:4]):
        body = transcript(cid, [(f"{cid}-e{k}", "user", f"text {i}.{k}")
                                for k in range(M)])
        assert ingest.post(body).status == 202
    pipeline.wait_caught_up()
    s = wait_until(lambda: (lambda s: s if val(
        s, "sluice_worker_records_total") >= N + 4 else None)(scrape(port)[0]),
        10, 0.1, "the re-sent records to be counted")
    assert pipeline.message_count() == N * M
    assert val(s, "sluice_worker_rows_written_total",
               kind="transcript") == N * M
    assert val(s, "sluice_worker_duplicates_total") == 4 * M

    # A record no handler knows goes to the dead-letter topic; the metric
    # counts what the topic holds.
    if Producer is not None:
        pr = Producer({"bootstrap.servers": services.brokers,
                       "log_level": 0})
        pr.produce(pipeline.topic, b'{"x":1}', key=b"dl",
                   headers=[("kind", b"no-such-kind")])
        assert pr.flush(10) == 0
        pipeline.wait_caught_up()
        s = wait_until(lambda: (lambda s: s if val(
            s, "sluice_worker_dead_letters_total",
            reason="unknown_kind") >= 1 else None)(
                scrape(port)[0]), 10, 0.1, "the dead letter to be counted")
        assert val(s, "sluice_worker_dead_letters_total",
                   reason="unknown_kind") == \
            services.dlq_count(pipeline.topic) == 1


def test_paths_and_methods(pipeline):
    port, listen = http_listen()
    pipeline.start_worker(listen=listen)

    r = http_request(port, "GET", "/nope", timeout=5)
    assert r.status == 404 and r.json["error"] == "not_found", r
    assert r.headers["content-type"] == "application/json"
    for method in ("POST", "DELETE"):
        r = http_request(port, method, "/metrics", body=b"{}", timeout=5)
        assert r.status == 405, r
        assert r.json["error"] == "method_not_allowed", r
        assert "GET" in r.headers["allow"], r.headers
    r = http_request(port, "HEAD", "/healthz", timeout=5)
    assert r.status == 200 and r.body == b"", r


def test_lead_context_metrics_and_answers_during_lookups(pipeline, services,
                                                         leadstub):
    K, L = 4, 8
    port, listen = http_listen()
    inbox = add_inbox(services, uid("inbox-"))
    leads = [f"{pipeline.prefix}L{i}" for i in range(L)]
    for i, lead in enumerate(leads):
        leadstub.set(lead, {"lead": {"name": f"Name{i}"}})
    leadstub.delay = 1.0
    http_worker(pipeline, leadstub, lead_context__concurrency=K,
                listen=listen)
    ingest = campaign_ingest(pipeline)

    run = uid("run-")
    post_batch(ingest, batch(run, [msg(f"{run}-a{i}", lead)
                                   for i, lead in enumerate(leads)], inbox,
                             run_total=2 * L))
    # While the batch waits on its lookups (two waves of 1 s), the
    # endpoint is served by the same loop: a loop blocked on a lookup would
    # answer after up to 1 s.
    wait_until(lambda: leadstub.in_flight() > 0, 10, 0.01,
               "the worker's lookups to reach the stub")
    times = []
    while leadstub.in_flight() > 0:
        r = http_request(port, "GET", "/metrics", timeout=5)
        assert r.status == 200
        times.append(r.elapsed)
    assert times and max(times) < 0.5, \
        f"/metrics during lookups took up to {max(times):.3f} s"
    wait_rows(services, run, L, timeout=30)
    s = wait_until(lambda: (lambda s: s if val(
        s, "sluice_worker_rows_written_total", kind="campaign") >= L
        else None)(scrape(port)[0]), 10, 0.1, "campaign rows counted")
    assert val(s, "sluice_worker_rows_written_total", kind="campaign") == L
    assert val(s, "sluice_worker_lead_contexts_total") == L
    assert val(s, "sluice_worker_lead_lookups_total") == L == \
        leadstub.snapshot()["total"]
    assert val(s, "sluice_worker_lead_cache_misses_total") == L
    assert val(s, "sluice_worker_lead_cache_hits_total") == 0
    assert val(s, "sluice_worker_lead_lookups_peak_in_flight") == K

    # The same leads again: every context comes from Redis.
    leadstub.delay = 0
    post_batch(ingest, batch(run, [msg(f"{run}-b{i}", lead)
                                   for i, lead in enumerate(leads)], inbox,
                             run_total=2 * L))
    wait_rows(services, run, 2 * L, timeout=30)
    s = wait_until(lambda: (lambda s: s if val(
        s, "sluice_worker_lead_cache_hits_total") >= L else None)(
            scrape(port)[0]), 10, 0.1, "cache hits counted")
    assert val(s, "sluice_worker_lead_cache_hits_total") == L
    assert val(s, "sluice_worker_lead_lookups_total") == L
    assert val(s, "sluice_worker_rows_written_total", kind="campaign") == 2 * L
