# Secrets (docs/configuration.md#secrets, docs/security.md#secrets): after a
# full run of both daemons with every secret they take read from a file (a
# Standard Webhooks signing secret given as a systemd credential, the
# composer's API key, both admin tokens, the password of a Redis with
# requirepass), no secret value appears in either daemon's argv, its
# environment, its log at debug level, its GET /status or its
# --check-config output. A secret file group or others may read is refused
# at start, naming the file and its mode; a bare name is a file of
# $CREDENTIALS_DIRECTORY, refused when that is not set.

import base64
import json
import os
import subprocess
import uuid
from datetime import datetime, timezone

import pytest
import redis
from standardwebhooks.webhooks import Webhook

from campaign_util import campaign_ingest
from compose_util import KEY, compose_settings, composed_run, outbox
from harness import (BUILD_DIR, existing_keys, free_port, http_request,
                     populate_keys, transcript, wait_until)

SOURCE = "signed"


class AuthRedis:
    """A redis-server of the test's own that wants a password
    (requirepass), so a worker that does not send it gets nothing done."""

    def __init__(self, d):
        self.password = "redis-" + uuid.uuid4().hex
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(d),
             "--requirepass", self.password,
             "--logfile", str(d / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        c = self.client()

        def up():
            try:
                return c.ping()
            except redis.exceptions.ConnectionError:
                return False
        wait_until(up, 15, message="redis-server with requirepass")

    def client(self):
        return redis.Redis(host="127.0.0.1", port=self.port,
                           password=self.password, socket_timeout=5)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def auth_redis(tmp_path):
    d = tmp_path / "redis"
    d.mkdir()
    r = AuthRedis(d)
    yield r
    r.stop()


def secret_file(path, value, mode=0o600):
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def signed(secret, body):
    wid = f"msg_{uuid.uuid4().hex}"
    when = datetime.now(tz=timezone.utc)
    return {"webhook-id": wid,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": Webhook(secret).sign(wid, when, body)}


def run(binary, *args, env=None):
    r = subprocess.run([str(BUILD_DIR / binary), *map(str, args)],
                       capture_output=True, text=True, timeout=60, env=env)
    return r.returncode, r.stdout + r.stderr


def proc_file(pid, name):
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read().replace(b"\0", b"\n").decode("utf-8", "replace")


def test_no_secret_leaks_after_a_full_run(pipeline, services, llm,
                                          auth_redis, tmp_path):
    raw = os.urandom(32)
    whsec = "whsec_" + base64.b64encode(raw).decode()
    ingest_token = "itok-" + uuid.uuid4().hex
    worker_token = "wtok-" + uuid.uuid4().hex
    # The signing secret as systemd hands it over: a bare name, the file
    # in $CREDENTIALS_DIRECTORY, 0400.
    creds = tmp_path / "credentials"
    creds.mkdir()
    secret_file(creds / "ingest_signed", whsec, 0o400)
    secret_file(creds / "worker_admin-token", worker_token, 0o400)
    pipeline.env["CREDENTIALS_DIRECTORY"] = str(creds)
    ingest = campaign_ingest(pipeline, **{
        f"source__{SOURCE}__kind": "transcript",
        f"source__{SOURCE}__signature": "standard-webhooks",
        f"source__{SOURCE}__secret_file": "ingest_signed",
        "admin_token_file": secret_file(tmp_path / "ingest.token",
                                        ingest_token),
        "log_level": "debug"})
    wport = free_port()
    worker = pipeline.start_worker(**compose_settings(
        pipeline, llm, redis_url=auth_redis.url,
        redis_password_file=secret_file(tmp_path / "redis.password",
                                        auth_redis.password),
        admin_token_file="worker_admin-token",
        listen=f"127.0.0.1:{wport}", log_level="debug"))

    # A signed transcript lands, and its keys go from the Redis that
    # wants the password: AUTH was sent with the file's.
    r = auth_redis.client()
    cid = pipeline.cid("signed")
    keys = populate_keys(r, cid)
    raw_body = json.dumps(transcript(cid, [("user", "hello")]))
    resp = ingest.post(raw_body, source=SOURCE,
                       headers=signed(whsec, raw_body))
    assert resp.status == 202, resp
    unsigned = ingest.post(raw_body, source=SOURCE)
    assert unsigned.status == 401, unsigned
    pipeline.wait_caught_up()
    assert len(pipeline.messages(cid)) == 1
    wait_until(lambda: existing_keys(r, keys) == [], 15,
               message="the keys invalidated through AUTH")

    # A campaign batch composed by the model, with the key from its file.
    run_id = composed_run(pipeline, services, ingest, 2, worker=worker)
    assert all(v[0] == "ready" for v in outbox(services, run_id).values())
    assert llm.calls and all(c.headers["authorization"] == f"Bearer {KEY}"
                             for c in llm.calls)
    assert http_request(wport, "GET", "/readyz").status == 200

    # Where a secret could show.
    seen = {}
    for name, d, port, token in (("ingest", ingest, ingest.port,
                                  ingest_token),
                                 ("worker", worker, wport, worker_token)):
        seen[f"{name} cmdline"] = proc_file(d.pid, "cmdline")
        seen[f"{name} environ"] = proc_file(d.pid, "environ")
        st = http_request(port, "GET", "/status",
                          headers={"Authorization": f"Bearer {token}"})
        assert st.status == 200, st
        seen[f"{name} /status"] = st.body.decode("utf-8", "replace")
        rc, out = run(f"sluice-{name}", "-c", d.config, "--check-config",
                      env=pipeline.env)
        assert rc == 0, out
        seen[f"{name} --check-config"] = out
    # The logs last: everything above was logged at debug.
    seen["ingest log"] = ingest.log_text()
    seen["worker log"] = worker.log_text()

    # The views looked at are the right ones: they name the files.
    assert "ingest_signed" in seen["ingest --check-config"]
    assert "redis.password" in seen["worker --check-config"]
    assert "admin_token_file" in seen["worker /status"]
    assert str(creds) in seen["ingest environ"]
    assert "GET /status" in seen["worker log"]
    secrets = {"signing secret": whsec,
               "signing key": base64.b64encode(raw).decode(),
               "ingest admin token": ingest_token,
               "worker admin token": worker_token,
               "composer key": KEY,
               "redis password": auth_redis.password}
    for what, value in secrets.items():
        for where, text in seen.items():
            assert value not in text, f"the {what} is in the {where}"


def _start(binary, conf, env):
    """A daemon started for real (not --check-config): its exit code and
    output, once it gave up."""
    return run(binary, "-c", conf, env=env)


def test_open_secret_files_refused_at_start(pipeline, llm, tmp_path):
    # One value fits every key: a signing secret is also a fine token.
    value = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    env = {k: v for k, v in pipeline.env.items()
           if k != "CREDENTIALS_DIRECTORY"}
    cases = [
        ("sluice-ingest", "source.signed.secret_file", 0o644,
         lambda f: pipeline.ingest_settings(**{
             "source__signed__kind": "transcript",
             "source__signed__signature": "standard-webhooks",
             "source__signed__secret_file": f})),
        ("sluice-ingest", "admin_token_file", 0o640,
         lambda f: pipeline.ingest_settings(admin_token_file=f)),
        ("sluice-worker", "redis_password_file", 0o604,
         lambda f: pipeline.worker_settings(redis_password_file=f)),
        ("sluice-worker", "admin_token_file", 0o644,
         lambda f: pipeline.worker_settings(
             admin_token_file=f, listen=f"127.0.0.1:{free_port()}")),
        ("sluice-worker", "composer.api_key_file", 0o644,
         lambda f: pipeline.worker_settings(
             **compose_settings(pipeline, llm, composer__api_key_file=f))),
    ]
    for i, (binary, key, mode, settings) in enumerate(cases):
        f = secret_file(tmp_path / f"open{i}.secret", value, mode)
        conf = pipeline._write(f"open{i}.conf", settings(str(f)))
        rc, out = _start(binary, conf, env)
        assert rc != 0, (key, out)
        assert (f"{key} {f}: permissions {mode:04o} are too open: a secret "
                "file must not be accessible by group or others") in out, \
            (key, out)
        assert value not in out, (key, out)
        f.chmod(0o600)
        rc, out = run(binary, "-c", conf, "--check-config", env=env)
        assert rc == 0 and "too open" not in out, (key, out)


def test_bare_names_are_systemd_credentials(pipeline, tmp_path):
    whsec = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    creds = tmp_path / "creds"
    creds.mkdir()
    conf = pipeline._write("ingest.conf", pipeline.ingest_settings(**{
        "source__signed__kind": "transcript",
        "source__signed__signature": "standard-webhooks",
        "source__signed__secret_file": "tavus"}))
    env = {k: v for k, v in pipeline.env.items()
           if k != "CREDENTIALS_DIRECTORY"}

    rc, out = _start("sluice-ingest", conf, env)
    assert rc != 0, out
    assert ("source.signed.secret_file tavus: a bare name is a systemd "
            "credential, but CREDENTIALS_DIRECTORY is not set") in out, out

    cenv = dict(env, CREDENTIALS_DIRECTORY=str(creds))
    rc, out = run("sluice-ingest", "-c", conf, "--check-config", env=cenv)
    assert rc != 0 and f"{creds}/tavus: No such file" in out, out
    # As systemd leaves it where the file system has no ACLs (0400, the
    # service's own), and where it has (0440, root's, the group bits the
    # ACL mask): both taken; others' bits never.
    for mode, ok in ((0o400, True), (0o440, True), (0o404, False)):
        secret_file(creds / "tavus", whsec, mode)
        rc, out = run("sluice-ingest", "-c", conf, "--check-config",
                      env=cenv)
        assert (rc == 0) == ok, (oct(mode), out)
        if not ok:
            assert f"{creds}/tavus: permissions {mode:04o} are too open" \
                in out, out
        assert whsec not in out
        (creds / "tavus").chmod(0o600)
        (creds / "tavus").unlink()

    # The started daemon verifies with the credential's secret.
    secret_file(creds / "tavus", whsec, 0o400)
    pipeline.env["CREDENTIALS_DIRECTORY"] = str(creds)
    ingest = pipeline.start_ingest(**{
        "source__signed__kind": "transcript",
        "source__signed__signature": "standard-webhooks",
        "source__signed__secret_file": "tavus"})
    cid = pipeline.cid("cred")
    body = json.dumps(transcript(cid, [("user", "hi")]))
    assert ingest.post(body, source="signed",
                       headers=signed(whsec, body)).status == 202


def test_redis_password_in_one_place(pipeline, tmp_path):
    pw = secret_file(tmp_path / "redis.password", "pw-" + uuid.uuid4().hex)
    conf = pipeline._write("worker.conf", pipeline.worker_settings(
        redis_url="redis://:inline@127.0.0.1:6379/0",
        redis_password_file=str(pw)))
    rc, out = run("sluice-worker", "-c", conf, "--check-config",
                  env=pipeline.env)
    assert rc != 0 and ("redis_url holds a password and redis_password_file "
                        "is set: keep one") in out, out
