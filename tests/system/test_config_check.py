# --check-config is the daemon's own start minus the sockets: what it
# refuses the start refuses (with the file and line), what it prints says
# where each value came from, --list-keys shows the templated families, and
# SIGHUP in both daemons logs what changed and names what waits for a
# restart (log line, metric, reload result).

import signal
import subprocess
import time

import pytest

from harness import (BUILD_DIR, SCHEMA_DIR, SOURCE, _format_config,
                     http_request, transcript, wait_until, free_port)

INGEST_BASE = (f"schema_dir = {SCHEMA_DIR}\n"
               "source.a.kind = transcript\n"
               "source.a.signature = none\n")


def _run(binary, *args, env=None):
    import os
    e = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    e.update(env or {})
    r = subprocess.run([str(BUILD_DIR / binary), *args], capture_output=True,
                       text=True, timeout=60, env=e)
    return r.returncode, r.stdout, r.stderr


def _check(tmp_path, binary, text, env=None):
    conf = tmp_path / "bad.conf"
    conf.write_text(text)
    rc, out, err = _run(binary, "-c", str(conf), "--check-config", env=env)
    return conf, rc, out, err


# (binary, file, the message, with {f} for the file's path)
BAD = [
    ("sluice-ingest", INGEST_BASE + "kafka.linger.mss = 5\n",
     '{f}:4: kafka.linger.mss: No such configuration property: "linger.mss"'),
    ("sluice-ingest", INGEST_BASE + "kafka.acks = 1\n",
     "`acks` must be set to `all` when `enable.idempotence` is true "
     "(kafka.acks at {f}:4)"),
    ("sluice-ingest", "topic = a\n" + INGEST_BASE + "topic = b\n",
     '{f}:5: duplicate key "topic" (first set at {f}:1)'),
    ("sluice-ingest", INGEST_BASE + 'topic = "abc\n',
     '{f}:4: unterminated quote: "abc'),
    ("sluice-ingest", INGEST_BASE + "source.a.kind = chat\n",
     '{f}:4: duplicate key "source.a.kind" (first set at {f}:2)'),
    ("sluice-worker", "kafka.session.timeout.ms = soon\n",
     '{f}:1: kafka.session.timeout.ms: Invalid value for configuration '
     'property "session.timeout.ms"'),
    ("sluice-worker", "log_level = info\nkafka.no.such = 1\n",
     '{f}:2: kafka.no.such: No such configuration property'),
    ("sluice-worker", "invalidate_keys = messages:{conv_id}:*\n",
     "{f}:1: invalidate_keys: unknown placeholder {conv_id} "
     "(known: {conversation_id})"),
    ("sluice-worker", "campaign_invalidate_keys = run:{conversation_id}\n",
     "{f}:1: campaign_invalidate_keys: unknown placeholder "
     "{conversation_id} (known: {run_id})"),
    ("sluice-worker", "invalidate_generation = gen:{conv_id}\n",
     "{f}:1: invalidate_generation: unknown placeholder {conv_id} "
     "(known: {conversation_id})"),
    ("sluice-worker", "campaign_invalidate_index = keys:{conversation_id}\n",
     "{f}:1: campaign_invalidate_index: unknown placeholder "
     "{conversation_id} (known: {run_id})"),
    # A SCAN template whose walk would delete a generation counter or a
    # key index of the same kind.
    ("sluice-worker", "invalidate_generation = messages:{conversation_id}:gen\n",
     'invalidate_keys: "messages:{conversation_id}:*" also matches the '
     'generation counter "messages:{conversation_id}:gen"'),
    ("sluice-worker", "campaign_invalidate_keys = run:*\n"
     "campaign_invalidate_index = run:{run_id}:keys\n",
     'campaign_invalidate_keys: "run:*" also matches the key index '
     '"run:{run_id}:keys"'),
    ("sluice-worker", "lead_context.url = http://crm/leads/{id}\n",
     "{f}:1: lead_context.url: unknown placeholder {id} (known: {lead_id})"),
    ("sluice-worker", 'group_id = g"\n',
     "{f}:1: value ends with a quote it never opened"),
]


@pytest.mark.parametrize("binary,text,message", BAD,
                         ids=[f"{b}-{i}" for i, (b, _, _) in enumerate(BAD)])
def test_check_config_refuses(tmp_path, binary, text, message):
    conf, rc, out, err = _check(tmp_path, binary, text)
    assert rc == 1, f"accepted:\n{out}{err}"
    assert message.replace("{f}", str(conf)) in err, err
    assert "configuration ok" not in out


def test_environment_override_does_not_hide_a_duplicate(tmp_path):
    conf, rc, out, err = _check(
        tmp_path, "sluice-worker", "topic = a\ntopic = b\n",
        env={"SLUICE_TOPIC": "from-env"})
    assert rc == 1, out
    assert f'{conf}:2: duplicate key "topic" (first set at {conf}:1)' in err


def test_the_start_refuses_what_the_check_refuses(tmp_path):
    """The real start builds its producer from the same settings: the
    check's refusal and the start's are the same words."""
    conf, rc, _, err = _check(tmp_path, "sluice-ingest", INGEST_BASE +
                              "listen = 127.0.0.1:%d\n" % free_port() +
                              "kafka.linger.mss = 5\n")
    assert rc == 1
    rc2, out2, err2 = _run("sluice-ingest", "-c", str(conf))
    assert rc2 == 1, out2 + err2
    want = f'{conf}:5: kafka.linger.mss: No such configuration property'
    assert want in err and want in err2, (err, err2)


def test_check_config_prints_origins_and_hides_secrets(tmp_path):
    secret = "whsec_" + "c2VjcmV0LWJ5dGVzLWZvci10ZXN0aW5nLW9ubHk="
    sfile = tmp_path / "signing.secret"
    sfile.write_text(secret + "\n")
    sfile.chmod(0o600)
    inline = "whsec_aW5saW5lLXNlY3JldC1mb3ItdGVzdGluZw=="
    conf = tmp_path / "ingest.conf"
    conf.write_text(INGEST_BASE +
                    "delivery_timeout_ms = 2000\n"
                    "source.f.kind = transcript\n"
                    "source.f.signature = standard-webhooks\n"
                    f"source.f.secret_file = {sfile}\n"
                    "source.i.kind = transcript\n"
                    "source.i.signature = standard-webhooks\n"
                    f"source.i.secret = {inline}\n"
                    "kafka.sasl.password = hunter2-not-shown\n"
                    "kafka.linger.ms = 3\n")
    rc, out, err = _run("sluice-ingest", "-c", str(conf), "--check-config",
                        env={"SLUICE_TOPIC": "from-env"})
    assert rc == 0, err
    lines = out.splitlines()
    assert "topic = from-env  (env SLUICE_TOPIC)" in lines, out
    assert f"delivery_timeout_ms = 2000  ({conf}:4)" in lines, out
    assert "retry_after_s = 5  (default)" in lines, out
    assert f"source.f.secret_file = {sfile}  ({conf}:7)" in lines, out
    assert f"source.i.secret = (hidden)  ({conf}:10)" in lines, out
    assert f"kafka.sasl.password = (hidden)  ({conf}:11)" in lines, out
    assert f"kafka.linger.ms = 3  ({conf}:12)" in lines, out
    assert "source.a.success_status = 202  (default)" in lines, out
    assert lines[-1] == "configuration ok"
    for s in (secret, secret[6:], inline, inline[6:], "hunter2"):
        assert s not in out + err, f"printed a secret: {s}"

    wconf = tmp_path / "worker.conf"
    wconf.write_text("redis_url = redis://u:pw-not-shown@127.0.0.1:1/0\n"
                     "batch_max = 10\n")
    rc, out, err = _run("sluice-worker", "-c", str(wconf), "--check-config",
                        env={"SLUICE_POSTGRES_DSN": "postgresql:///x"})
    assert rc == 0, err
    lines = out.splitlines()
    assert "postgres_dsn = postgresql:///x  (env SLUICE_POSTGRES_DSN)" \
        in lines, out
    assert f"redis_url = redis://u:***@127.0.0.1:1/0  ({wconf}:1)" \
        in lines, out
    assert f"batch_max = 10  ({wconf}:2)" in lines, out
    assert "group_id = sluice-worker  (default)" in lines, out
    assert "pw-not-shown" not in out + err


def test_list_keys_shows_families_and_reloadability():
    rc, out, _ = _run("sluice-ingest", "--list-keys")
    assert rc == 0
    rows = {r.split("\t")[0]: r.split("\t") for r in out.splitlines()}
    for k in ("kind", "signature", "secret", "secret_file", "verify_token",
              "success_status", "rate", "burst"):
        assert f"source.NAME.{k}" in rows, out
        assert rows[f"source.NAME.{k}"][3] == "runtime"
    assert rows["source.NAME.success_status"][2] == "202"
    assert rows["kafka.PROPERTY"][3] == "restart"
    assert rows["brokers"][1:] == ["string", "127.0.0.1:9092", "restart"]
    assert rows["max_inflight"][1:] == ["int 1..1000000", "10000", "runtime"]
    assert rows["log_level"][3] == "runtime"

    rc, out, _ = _run("sluice-worker", "--list-keys")
    assert rc == 0
    rows = {r.split("\t")[0]: r.split("\t") for r in out.splitlines()}
    assert rows["kafka.PROPERTY"][3] == "restart"
    assert rows["invalidate_keys"][1] == "template"
    assert rows["log_level"][3] == "runtime"
    assert rows["stall_alert_s"][3] == "runtime"
    assert rows["batch_max"][3] == "restart"
    assert rows["group_id"][3] == "restart"


def _metric(port, name):
    text = http_request(port, "GET", "/metrics", timeout=5).body.decode()
    for line in text.splitlines():
        if line.split(" ")[0] == name:
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{text[:3000]}")


def test_sighup_ingest_logs_the_diff_and_keeps_restart_only_keys(pipeline):
    old_secret = "whsec_b2xkLXNlY3JldC1mb3ItcmVsb2Fk"
    new_secret = "whsec_bmV3LXNlY3JldC1mb3ItcmVsb2Fk"
    file_old = "whsec_ZmlsZS1zZWNyZXQtb25lLWZvci10ZXN0"
    file_new = "whsec_ZmlsZS1zZWNyZXQtdHdvLWZvci10ZXN0"
    sfile = pipeline.tmp / "filed.secret"
    sfile.write_text(file_old + "\n")
    sfile.chmod(0o600)
    ingest = pipeline.start_ingest(source__signed__kind="transcript",
                                   source__signed__signature="standard-webhooks",
                                   source__signed__secret=old_secret,
                                   source__filed__kind="transcript",
                                   source__filed__signature="standard-webhooks",
                                   source__filed__secret_file=str(sfile))
    settings = pipeline.ingest_settings()
    original = ingest.config.read_text()
    brokers = settings["brokers"]
    changed = dict(
        (k, v) for k, v in
        (line.split(" = ", 1) for line in original.strip().splitlines()))
    changed.update({"brokers": "127.0.0.1:1", "log_level": "debug",
                    "kafka.linger.ms": "5", "retry_after_s": "9",
                    "source.signed.secret": new_secret})
    ingest.config.write_text(_format_config(changed))
    sfile.write_text(file_new + "\n")
    before = len(ingest.log_text())
    ingest.signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in ingest.log_text()[before:], 10,
               message="the reload to be logged")
    log = ingest.log_text()[before:]
    assert f"reload: brokers: {brokers} -> 127.0.0.1:1" in log, log
    assert "reload: log_level: info -> debug" in log, log
    assert "reload: retry_after_s: 5 -> 9" in log, log
    assert "reload: kafka.linger.ms: (unset) -> 5" in log, log
    assert "reload: source.signed.secret: (changed)" in log, log
    assert "reload: restart required for brokers, kafka.linger.ms" in log, log
    assert "reload: source.filed.secret_file: content (changed)" in log, log
    for secret in (old_secret, new_secret, file_old, file_new):
        assert secret[6:] not in log, f"a secret in the log: {secret}"
    port = ingest.port
    assert _metric(port, 'sluice_ingest_reloads_total{result="restart_required"}') == 1
    assert _metric(port, 'sluice_ingest_reloads_total{result="ok"}') == 0
    assert _metric(port, "sluice_ingest_config_restart_pending") == 1
    # brokers kept its running value: records still land
    r = ingest.post(transcript(pipeline.cid("kept"), [("user", "x")]))
    assert r.status == 202, r
    # log_level applied: a rejection is logged at debug now
    r = ingest.request("POST", "/v1/webhooks/nosuchsource", b"{}",
                       headers={"Content-Type": "application/json"})
    assert r.status == 404
    wait_until(lambda: " debug: 404 " in ingest.log_text()[before:], 5,
               message="a debug line after log_level = debug")

    # The file says again what runs: nothing waits, the reload is ok.
    restored = dict(changed, brokers=brokers)
    del restored["kafka.linger.ms"]
    ingest.config.write_text(_format_config(restored))
    before = len(ingest.log_text())
    ingest.signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in ingest.log_text()[before:], 10,
               message="the second reload to be logged")
    log = ingest.log_text()[before:]
    assert "restart required" not in log, log
    assert f"reload: brokers: 127.0.0.1:1 -> {brokers}" not in log, \
        "brokers never changed in the running daemon"
    assert _metric(port, 'sluice_ingest_reloads_total{result="ok"}') == 1
    assert _metric(port, "sluice_ingest_config_restart_pending") == 0


def test_sighup_worker_applies_log_level_and_names_the_rest(pipeline):
    port = free_port()
    ingest = pipeline.start_ingest()
    worker = pipeline.start_worker(listen=f"127.0.0.1:{port}")
    s = dict(pipeline.last_worker_settings)
    cid = pipeline.cid("before")
    assert ingest.post(transcript(cid, [("user", "x")])).status == 202
    wait_until(lambda: pipeline.messages(cid), 30, message="the first row")
    wait_until(lambda: "saved" in worker.log_text(), 10,
               message="an info batch line")

    worker.config.write_text(_format_config(dict(
        s, log_level="warn", batch_max=7, stall_alert_s=60,
        **{"kafka.fetch.error.backoff.ms": 100})))
    before = len(worker.log_text())
    worker.signal(signal.SIGHUP)
    wait_until(lambda: "reload: restart required" in
               worker.log_text()[before:], 10,
               message="the restart-only warning")
    log = worker.log_text()[before:]
    assert "reload: log_level: info -> warn" in log, log
    assert "reload: batch_max: 2000 -> 7" in log, log
    assert "reload: stall_alert_s: 300 -> 60" in log, log
    assert ("reload: restart required for batch_max, "
            "kafka.fetch.error.backoff.ms") in log, log
    assert _metric(port, 'sluice_worker_reloads_total{result="restart_required"}') == 1
    assert _metric(port, "sluice_worker_config_restart_pending") == 1

    # log_level = warn applies: a batch is saved without its info line.
    cid = pipeline.cid("quiet")
    assert ingest.post(transcript(cid, [("user", "x")])).status == 202
    wait_until(lambda: pipeline.messages(cid), 30, message="the quiet row")
    time.sleep(0.5)
    assert "saved" not in worker.log_text()[before:], \
        worker.log_text()[before:]

    # Back to what runs, at info again: ok, nothing pending, info lines.
    worker.config.write_text(_format_config(s))
    before = len(worker.log_text())
    worker.signal(signal.SIGHUP)
    wait_until(lambda: "reloaded" in worker.log_text()[before:], 10,
               message="the second reload")
    log = worker.log_text()[before:]
    assert "reload: log_level: warn -> info" in log, log
    assert "restart required" not in log, log
    assert _metric(port, 'sluice_worker_reloads_total{result="ok"}') == 1
    assert _metric(port, "sluice_worker_config_restart_pending") == 0
    cid = pipeline.cid("loud")
    assert ingest.post(transcript(cid, [("user", "x")])).status == 202
    wait_until(lambda: "saved" in worker.log_text()[before:], 30,
               message="the info batch line again")

    # A file that does not load keeps the running configuration.
    worker.config.write_text(_format_config(s) + "topic = other\n")
    worker.signal(signal.SIGHUP)
    wait_until(lambda: "reload of" in worker.log_text()[before:], 10,
               message="the failed reload")
    assert "duplicate key \"topic\"" in worker.log_text()[before:]
    assert _metric(port, 'sluice_worker_reloads_total{result="failed"}') == 1
    worker.config.write_text(_format_config(s))
