# Both daemons' /metrics as Prometheus's own tool reads them: `promtool
# check metrics` finds nothing to say (HELP and TYPE on every family, units
# in seconds, counters in _total, a histogram's samples together), and the
# figures an operator alerts on are there with values that match what the
# test did: build_info, process_*, responses by route (a probe's 503 apart
# from the webhooks'), dead letters by reason, the last commit. The shipped
# rules (deploy/prometheus) pass `promtool check rules` and their unit
# tests, and name only metrics the daemons expose.

import json
import re
import shutil
import subprocess
import time

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from compose_util import compose_settings
from harness import (REPO, SOURCE, free_port, http_request, transcript,
                     wait_until)

RULES = REPO / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool():
    """promtool, installed by deploy/install-deps.sh (Debian's prometheus
    package) when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        r = subprocess.run([str(REPO / "deploy" / "install-deps.sh")],
                           env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                "SLUICE_SKIP_VENV": "1",
                                "SLUICE_SKIP_KAFKA": "1"},
                           capture_output=True, text=True, timeout=900)
        path = shutil.which("promtool")
        if path is None:
            pytest.skip("promtool is absent and deploy/install-deps.sh could "
                        f"not install it (rc {r.returncode}): "
                        f"{r.stderr.strip()[-300:]}")
    return path


def lint(promtool, text):
    """promtool check metrics on an exposition: (rc, what it said)."""
    r = subprocess.run([promtool, "check", "metrics"], input=text,
                       capture_output=True, text=True, timeout=30)
    return r.returncode, (r.stdout + r.stderr).strip()


def scrape(port):
    """(the exposition's text, {(name, frozenset(labels)): value},
    {family name: type})."""
    r = http_request(port, "GET", "/metrics", timeout=5)
    assert r.status == 200, r
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.body.decode("utf-8")
    samples, types = {}, {}
    for f in text_string_to_metric_families(text):
        types[f.name] = f.type
        for s in f.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples, types


def val(samples, name, **labels):
    key = (name, frozenset((k, str(v)) for k, v in labels.items()))
    assert key in samples, f"{name}{labels} not exposed; have " + ", ".join(
        sorted({k[0] for k in samples if k[0].startswith(name[:14])}))
    return samples[key]


def with_labels(samples, name):
    """{frozenset(labels): value} of every sample of name."""
    return {k[1]: v for k, v in samples.items() if k[0] == name}


def assert_clean(promtool, daemon, text):
    rc, said = lint(promtool, text)
    assert (rc, said) == (0, ""), (
        f"promtool check metrics on {daemon}'s /metrics: rc {rc}\n{said}")
    # Every sample belongs to the family whose TYPE came last: a
    # histogram's buckets never come after another family's TYPE line.
    family = None
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            family = m.group(1)
        elif line and not line.startswith("#"):
            name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
            assert name == family or name.startswith(family + "_") and \
                name[len(family):] in ("_bucket", "_sum", "_count"), (
                f"{daemon}: {line!r} after the TYPE of {family}")


def assert_process(samples, started):
    now = time.time()
    start = val(samples, "process_start_time_seconds")
    # /proc's btime is whole seconds: a second either way.
    assert started - 2 <= start <= now + 1, (start, started, now)
    assert val(samples, "process_resident_memory_bytes") > 1 << 20
    assert val(samples, "process_virtual_memory_bytes") > 1 << 20
    assert 3 <= val(samples, "process_open_fds") <= \
        val(samples, "process_max_fds")
    assert 0 <= val(samples, "process_cpu_seconds_total") < now - start + 5


def assert_build_info(samples, name):
    info = with_labels(samples, name)
    assert len(info) == 1 and list(info.values()) == [1.0], info
    labels = dict(next(iter(info)))
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", labels["version"]), labels
    if "commit" in labels:
        assert re.fullmatch(r"[0-9a-f]{7,40}", labels["commit"]), labels


def test_metrics_pass_promtool_and_count_what_happened(pipeline, services,
                                                      llm, promtool):
    started = time.time()
    wport = free_port()
    # With a composer, so its families are linted too.
    pipeline.start_worker(listen=f"127.0.0.1:{wport}",
                          **compose_settings(pipeline, llm))
    ingest = pipeline.start_ingest()
    port = ingest.port

    # The figures before any traffic.
    _, w0, _ = scrape(wport)
    assert_build_info(w0, "sluice_worker_build_info")
    assert started - 2 <= val(
        w0, "sluice_worker_last_reload_timestamp_seconds") <= time.time()
    commit0 = val(w0, "sluice_worker_last_commit_timestamp_seconds",
                  pipeline="transcript")
    assert started - 2 <= commit0 <= time.time()   # its start, as yet

    # A webhook, a probe and two records the worker must dead-letter:
    # one of a kind nobody handles, one its handler refuses.
    cid = pipeline.cid()
    assert ingest.post(transcript(cid, [("user", "hello")])).status == 202
    assert ingest.request("GET", "/readyz").status == 200
    assert ingest.request("GET", "/healthz").status == 200
    pr = Producer({"bootstrap.servers": services.brokers, "log_level": 0})
    pr.produce(pipeline.topic, b'{"x":1}', key=b"dl-kind", partition=0,
               headers=[("kind", b"no-such-kind")])
    pr.produce(pipeline.topic, b"{not json", key=b"dl-invalid", partition=0,
               headers=[("kind", b"transcript"), ("source", SOURCE.encode())])
    assert pr.flush(10) == 0
    before_batch = time.time()
    wait_until(lambda: pipeline.message_count(cid) == 1, 30, 0.1,
               "the webhook's message to land")
    pipeline.wait_caught_up()

    def dead_counted():
        _, s, _ = scrape(wport)
        return s if sum(with_labels(
            s, "sluice_worker_dead_letters_total").values()) >= 2 else None
    wait_until(dead_counted, 15, 0.2, "the two dead letters to be counted")

    # The worker.
    text, w, wtypes = scrape(wport)
    assert_clean(promtool, "sluice-worker", text)
    assert_build_info(w, "sluice_worker_build_info")
    assert_process(w, started)
    dead = {dict(k)["reason"]: v for k, v in
            with_labels(w, "sluice_worker_dead_letters_total").items()}
    assert dead == {"unknown_kind": 1, "invalid": 1, "empty": 0,
                    "refused_by_postgres": 0}, dead
    assert services.dlq_count(pipeline.topic) == 2
    commit = val(w, "sluice_worker_last_commit_timestamp_seconds",
                 pipeline="transcript")
    assert before_batch - 1 <= commit <= time.time(), (commit, before_batch)
    assert wtypes["sluice_worker_last_commit_timestamp_seconds"] == "gauge"
    assert wtypes["sluice_worker_batch_duration_seconds"] == "histogram"
    assert val(w, "sluice_worker_invalidations_owed") == 0
    assert val(w, "sluice_worker_composer_held") == 0

    # Ingest: one webhook 202, probes and scrapes under their own routes.
    text, i, itypes = scrape(port)
    assert_clean(promtool, "sluice-ingest", text)
    assert_build_info(i, "sluice_ingest_build_info")
    assert_process(i, started)
    assert started - 2 <= val(
        i, "sluice_ingest_last_reload_timestamp_seconds") <= time.time()
    resp = {(dict(k)["route"], dict(k)["code"]): v for k, v in
            with_labels(i, "sluice_ingest_responses_total").items() if v}
    assert resp[("webhook", "202")] == 1, resp
    assert resp[("probe", "200")] >= 2, resp   # ours and the harness's
    assert not [k for k in resp if k[0] == "webhook" and k[1] != "202"], resp
    assert not [k for k in resp if k[0] == "campaign"], resp
    assert itypes["sluice_ingest_delivery_seconds"] == "histogram"
    assert val(i, "sluice_ingest_delivery_seconds_count") == 1
    # Seconds: a loopback broker confirms well within one.
    assert 0 < val(i, "sluice_ingest_delivery_seconds_sum") < 1
    assert val(i, "sluice_ingest_delivery_seconds_bucket", le="1") == 1
    # This scrape counts on the next one, as a scrape.
    _, i2, _ = scrape(port)
    assert val(i2, "sluice_ingest_responses_total", route="metrics",
               code="200") >= 1
    assert val(i2, "sluice_ingest_responses_total", route="webhook",
               code="202") == 1

    # Every sluice_* and process_* name in deploy/prometheus is a family,
    # or a histogram's series, that one of the daemons exposes: a renamed
    # metric cannot leave an alert silently watching nothing.
    exposed = set()
    for s in (w, i):
        exposed |= {k[0] for k in s}
    exposed |= set(wtypes) | set(itypes)
    shipped = "\n".join((RULES / f).read_text() for f in
                        ("alerts.yml", "recording.yml", "grafana-sluice.json"))
    # Recorded series (level:metric:operations) are not the daemons'.
    recorded = re.findall(r"record: (\S+)", shipped)
    for r in recorded:
        shipped = shipped.replace(r, "")
    used = set(re.findall(r"\b(?:sluice|process)_[a-z0-9_]*[a-z]", shipped))
    assert "sluice_worker_composer_held" in used
    missing = sorted(used - exposed)
    assert not missing, f"named in deploy/prometheus, not exposed: {missing}"


def test_a_readyz_503_is_a_probe_not_a_webhook(pipeline, promtool):
    """An ingest whose broker is gone: its /readyz answers 503 and so does
    a webhook (after delivery_timeout_ms); the webhook's 503 is the only
    one under route="webhook"."""
    dead_broker = f"127.0.0.1:{free_port()}"
    ingest = pipeline.start_ingest(brokers=dead_broker,
                                   delivery_timeout_ms=1000)
    probes = []

    def unready():
        r = ingest.request("GET", "/readyz", timeout=5)
        probes.append(r.status)
        return r if r.status == 503 else None
    r = wait_until(unready, 30, 0.2, "/readyz to answer 503 with no broker")
    assert r.json["status"] == "unavailable", r.json
    assert r.json["kafka"]["ok"] is False and r.json["kafka"]["error"], \
        r.json
    w = ingest.post(transcript(pipeline.cid(), [("user", "x")]), timeout=30)
    assert w.status == 503, w

    text, i, _ = scrape(ingest.port)
    assert_clean(promtool, "sluice-ingest", text)
    assert val(i, "sluice_ingest_responses_total", route="webhook",
               code="503") == 1
    assert val(i, "sluice_ingest_responses_total", route="probe",
               code="503") >= probes.count(503) >= 1
    assert val(i, "sluice_ingest_kafka_up") == 0


def test_shipped_rules_pass_promtool(promtool):
    r = subprocess.run([promtool, "check", "rules", "alerts.yml",
                        "recording.yml"], cwd=RULES, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout, r.stdout
    r = subprocess.run([promtool, "test", "rules", "alerts_test.yml"],
                       cwd=RULES, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    """alerts_test.yml tests each alert in alerts.yml at least once with
    an alert expected and once with none."""
    alerts = re.findall(r"^\s*- alert: (\S+)",
                        (RULES / "alerts.yml").read_text(), re.M)
    tests = (RULES / "alerts_test.yml").read_text()
    cases = re.findall(r"alertname: (\S+)\n\s+exp_alerts:(.*?)(?=\n\s*- "
                       r"eval_time:|\n\s*- name:|\n\s*promql_expr_test:|\Z)",
                       tests, re.S)
    assert alerts, "no alerts in alerts.yml"
    for a in alerts:
        kinds = {"quiet" if body.strip() == "[]" else "fires"
                 for name, body in cases if name == a}
        assert kinds == {"quiet", "fires"}, f"{a}: cases {kinds or None}"


def test_grafana_dashboard_is_valid_and_datasource_agnostic(promtool,
                                                           tmp_path):
    """The dashboard is JSON, picks its Prometheus through a variable, and
    each query parses as PromQL (promtool checks them as recording rules,
    Grafana's variables replaced by values)."""
    dash = json.loads((RULES / "grafana-sluice.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dash["panels"] if p.get("type") != "row"]
    assert len(panels) >= 8
    exprs = []
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            exprs.append(t["expr"].replace("$__rate_interval", "5m")
                         .replace("$ingest_job", ".+")
                         .replace("$worker_job", ".+"))
    assert "$" not in "".join(exprs), exprs
    rules = tmp_path / "dashboard.yml"
    rules.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query{n}", "expr": e}
        for n, e in enumerate(exprs)]}]}))
    r = subprocess.run([promtool, "check", "rules", str(rules)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
