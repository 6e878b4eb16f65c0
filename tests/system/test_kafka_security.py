# Kafka with SASL_SSL, SCRAM-SHA-512 and ACLs: one secure broker for the
# module (deploy/services.sh with SLUICE_KAFKA_SECURE=1), PostgreSQL and
# Redis from the session. The pipeline lands a transcript as
# sluice_ingest and sluice_worker with exactly the ACLs of
# docs/security.md; a wrong password, an unknown CA and a missing ACL each
# make /readyz 503 naming the cause, said once in the log, and land nothing.

import copy
import re
import subprocess
import time
import uuid

import pytest

from harness import (BUILD_DIR, REPO, Pipeline, free_port, http_request,
                     transcript, wait_until)
from secure_util import TOPIC
from secure_util import kafka_client as client
from secure_util import start_secure_kafka, stop_services

# Under the worker's PREFIXED group ACL `sluice-worker`, and new for each
# run: offsets stored in a reused PostgreSQL never meet a fresh broker.
GROUP = f"sluice-worker-t{uuid.uuid4().hex[:8]}"
# How long a refused client is watched for log lines.
WATCH_S = 12
# Warnings and errors allowed in that time: a client's first refusals,
# before its cause is known, are librdkafka's own (a few per client).
FLOOD = 12


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    d = tmp_path_factory.mktemp("securekafka")
    try:
        yield start_secure_kafka(d)
    finally:
        stop_services(d)


@pytest.fixture
def spipe(request, services, secure, tmp_path):
    """A Pipeline on the secure broker: the topic and a group the ACLs
    name, PostgreSQL and Redis from the session."""
    s = copy.copy(services)
    s.brokers = secure.brokers
    p = Pipeline(request, s, tmp_path)
    p.topic = TOPIC
    p.group = GROUP
    yield p
    problems = p.check_daemons()
    if problems:
        pytest.fail("daemon teardown:\n\n" + "\n\n".join(problems),
                    pytrace=False)


def start_worker(spipe, secure, wait=True, **kw):
    port = free_port()
    w = spipe.start_worker(wait=wait, listen=f"127.0.0.1:{port}",
                           **client(secure, "sluice_worker", **kw))
    w.http_port = port
    return w


def readyz(port):
    r = http_request(port, "GET", "/readyz", timeout=5)
    return r.status, (r.json if isinstance(r.json, dict) else {})


def kafka_error(port):
    """/readyz's status and its kafka check's error ("" while ok); both
    daemons answer {"kafka": {"ok": ..., "error": ...}}."""
    status, body = readyz(port)
    k = body.get("kafka") or {}
    return status, k.get("error", "") if not k.get("ok", True) else ""


def ingest_kafka_error(ingest):
    return kafka_error(ingest.port)


def worker_kafka_error(worker):
    return kafka_error(worker.http_port)


def wait_refused(get, pattern, what):
    """Wait until /readyz is 503 with a Kafka error matching pattern."""
    seen = []

    def refused():
        status, err = get()
        seen.append((status, err))
        return status == 503 and re.search(pattern, err)
    wait_until(refused, 60, 0.5, f"{what}: /readyz 503 naming /{pattern}/",
               describe=lambda: f"last {seen[-3:]}")
    return seen[-1][1]


def assert_said_once(daemon, phrase):
    """The cause is logged once (one line per cause per 30 s), and the
    log is not flooded by librdkafka's retries either."""
    time.sleep(WATCH_S)
    text = daemon.log_text()
    ours = [ln for ln in text.splitlines() if phrase in ln]
    assert len(ours) == 1, (
        f"expected one line with {phrase!r} in {WATCH_S}+ s, got "
        f"{len(ours)}:\n" + "\n".join(ours[:10]))
    bad = [ln for ln in text.splitlines()
           if " warn: " in ln or " error: " in ln]
    assert len(bad) <= FLOOD, (
        f"{len(bad)} warnings and errors while refused: flooded\n"
        + "\n".join(bad[-30:]))


def test_brokers_acls_are_the_docs(secure):
    """The broker holds exactly the ACLs docs/security.md lists."""
    want = set()
    doc = (REPO / "docs" / "security.md").read_text()
    block = doc.split("<!-- kafka-acls:begin -->")[1].split(
        "<!-- kafka-acls:end -->")[0]
    lines = [ln for ln in block.splitlines()
             if ln.startswith("kafka-acls.sh ")]
    assert len(lines) >= 5, block
    for ln in lines:
        a = ln.split()
        principal = a[a.index("--allow-principal") + 1]
        ops = [a[i + 1] for i, w in enumerate(a) if w == "--operation"]
        if "--topic" in a:
            res = ("TOPIC", a[a.index("--topic") + 1])
        elif "--group" in a:
            res = ("GROUP", a[a.index("--group") + 1])
        else:
            assert "--cluster" in a, ln
            res = ("CLUSTER", "kafka-cluster")
        pattern = ("PREFIXED" if "prefixed" in a else "LITERAL")
        for op in ops:
            op = re.sub(r"(?<!^)(?=[A-Z])", "_", op).upper()
            want.add((principal, op, *res, pattern))

    have = set()
    res = None
    for ln in secure.acls("--list").splitlines():
        m = re.search(r"resourceType=(\w+), name=([^,]+), "
                      r"patternType=(\w+)", ln)
        if m:
            res = m.groups()
            continue
        m = re.search(r"principal=([^,]+), host=\*, operation=(\w+), "
                      r"permissionType=ALLOW", ln)
        if m:
            have.add((m.group(1), m.group(2), res[0], res[1], res[2]))
    assert have == want, (f"missing {sorted(want - have)}; "
                          f"extra {sorted(have - want)}")


def test_secure_pipeline_lands_a_transcript(spipe, secure):
    worker = start_worker(spipe, secure)
    ingest = spipe.start_ingest(**client(secure, "sluice_ingest"))
    wait_until(lambda: readyz(ingest.port)[0] == 200, 60,
               message="ingest /readyz 200 on the secure broker",
               describe=lambda: readyz(ingest.port))
    cid = spipe.cid("secure")
    r = ingest.post(transcript(cid, [("user", "over SASL_SSL"),
                                     ("assistant", "with ACLs")]))
    assert r.status == 202, r
    wait_until(lambda: spipe.message_count(cid) == 2, 60, 0.25,
               message="the worker to land the transcript",
               describe=lambda: worker.log_tail(15))
    assert readyz(worker.http_port)[0] == 200, readyz(worker.http_port)
    # The passwords reach librdkafka only: no log holds them.
    for user in ("sluice_ingest", "sluice_worker"):
        pw = open(secure.password_file(user)).read().strip()
        for d in (ingest, worker):
            assert pw not in d.log_text(), f"{user}'s password in a log"


def test_wrong_password(spipe, secure, tmp_path):
    bad = tmp_path / "bad.password"
    bad.write_text("not-the-password\n")
    bad.chmod(0o600)
    ingest = spipe.start_ingest(delivery_timeout_ms=3000,
                                **client(secure, "sluice_ingest",
                                         password_file=str(bad)))
    worker = start_worker(spipe, secure, wait=False, password_file=str(bad))
    wait_refused(lambda: ingest_kafka_error(ingest), "authentication failed",
                 "ingest")
    wait_refused(lambda: worker_kafka_error(worker), "authentication failed",
                 "worker")
    cid = spipe.cid("badpw")
    r = ingest.post(transcript(cid, [("user", "never lands")]))
    assert r.status == 503, r
    assert_said_once(ingest, "kafka: authentication failed")
    assert_said_once(worker, "kafka: authentication failed")
    assert spipe.message_count(cid) == 0


def test_unknown_ca(spipe, secure, tmp_path):
    other = tmp_path / "other-ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-days", "2", "-subj", "/CN=another CA", "-keyout",
         str(tmp_path / "other-ca.key"), "-out", str(other)],
        check=True, capture_output=True)
    ingest = spipe.start_ingest(**client(secure, "sluice_ingest",
                                         ca=str(other)))
    worker = start_worker(spipe, secure, wait=False, ca=str(other))
    err = wait_refused(lambda: ingest_kafka_error(ingest),
                       "TLS handshake failed", "ingest")
    assert "certificate verify failed" in err, err
    wait_refused(lambda: worker_kafka_error(worker), "TLS handshake failed",
                 "worker")
    assert_said_once(ingest, "kafka: TLS handshake failed")
    assert_said_once(worker, "kafka: TLS handshake failed")


def test_missing_write_acl(spipe, secure):
    rule = ["--allow-principal", "User:sluice_ingest", "--operation",
            "Write", "--topic", TOPIC]
    secure.acls("--remove", "--force", *rule)
    try:
        ingest = spipe.start_ingest(delivery_timeout_ms=5000,
                                    **client(secure, "sluice_ingest"))
        cid = spipe.cid("nowrite")
        for i in range(3):
            r = ingest.post(transcript(f"{cid}-{i}", [("user", "refused")]))
            assert r.status == 503, r
        status, err = ingest_kafka_error(ingest)
        assert status == 503 and (
            f"not authorized to write topic {TOPIC}" in err), (status, err)
        assert_said_once(ingest, f"not authorized to write topic {TOPIC}")
    finally:
        secure.acls("--add", *rule)
    # Granted again: the next write goes through and /readyz recovers.
    cid = spipe.cid("written")

    def accepted():
        return ingest.post(transcript(cid, [("user", "now")])).status == 202
    wait_until(accepted, 60, 1, message="a 202 once the ACL is back")
    assert readyz(ingest.port)[0] == 200


def test_missing_group_acl(spipe, secure):
    rule = ["--allow-principal", "User:sluice_worker", "--operation", "Read",
            "--group", "sluice-worker", "--resource-pattern-type",
            "prefixed"]
    secure.acls("--remove", "--force", *rule)
    try:
        worker = start_worker(spipe, secure, wait=False)
        err = wait_refused(lambda: worker_kafka_error(worker),
                           "not authorized for consumer group", "worker")
        assert GROUP in err, err
        # One line per group (a pipeline each: <group_id>.<kind>), once.
        time.sleep(WATCH_S)
        said = re.findall(r"kafka: not authorized for consumer group (\S+)",
                          worker.log_text())
        assert said and len(said) == len(set(said)), said
        assert all(g.startswith(GROUP + ".") for g in said), said
        bad = [ln for ln in worker.log_text().splitlines()
               if " warn: " in ln or " error: " in ln]
        assert len(bad) <= FLOOD, "\n".join(bad)
        assert "assigned" not in worker.log_text()
    finally:
        secure.acls("--add", *rule)


def test_missing_topic_read_acl(spipe, secure):
    rule = ["--allow-principal", "User:sluice_worker", "--operation", "Read",
            "--topic", TOPIC]
    secure.acls("--remove", "--force", *rule)
    try:
        worker = start_worker(spipe, secure, wait=False)
        wait_refused(lambda: worker_kafka_error(worker),
                     f"not authorized to read topic {TOPIC}", "worker")
        assert_said_once(worker, f"not authorized to read topic {TOPIC}")
    finally:
        secure.acls("--add", *rule)


@pytest.mark.parametrize("kind", ["ingest", "worker"])
def test_password_file_checked(spipe, secure, tmp_path, kind):
    """The password file: refused when group or others may read it, or
    beside kafka.sasl.password; never printed by --check-config."""
    pw = tmp_path / "kafka.password"
    pw.write_text("hunter2-not-logged\n")
    settings = (spipe.ingest_settings if kind == "ingest"
                else spipe.worker_settings)

    def check(**over):
        s = settings(**client(secure, f"sluice_{kind}",
                              password_file=str(pw)), **over)
        cfg = tmp_path / f"{kind}.conf"
        cfg.write_text("".join(
            f'{k} = "{v}"\n' for k, v in s.items() if v is not None))
        r = subprocess.run([str(BUILD_DIR / f"sluice-{kind}"), "-c",
                            str(cfg), "--check-config"],
                           capture_output=True, text=True, timeout=30,
                           env=spipe.env)
        assert "hunter2" not in r.stdout + r.stderr, r
        return r

    pw.chmod(0o644)
    r = check()
    assert r.returncode != 0, r
    assert "too open" in r.stderr and str(pw) in r.stderr, r.stderr
    pw.chmod(0o600)
    r = check()
    assert r.returncode == 0, r
    assert "kafka.sasl.password = (hidden)" in r.stdout, r.stdout
    r = check(kafka__sasl__password="inline")
    assert r.returncode != 0 and "both set" in r.stderr, r
