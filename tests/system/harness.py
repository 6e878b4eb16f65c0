# The system tests' harness (pgbouncer's test/utils.py): everything the
# tests and their fixtures (conftest.py) share.
#
# - Services: the private PostgreSQL, Redis and Kafka that deploy/services.sh
#   runs, with queries, Kafka reads and fault injection (stop/start).
# - Daemon, IngestDaemon, WorkerDaemon: one sluice binary run from a config
#   file, stderr to a log file.
# - Pipeline: per test, a unique topic, group id and conversation-id prefix;
#   writes configs and starts daemons on request; check_daemons() stops them
#   and reports exit codes other than 0 and crash or sanitizer reports.
# - An HTTP client (http_request, raw_request, post, Client), the payload
#   builders (transcript, event, ping_pong) and wait_until.
#
# The binaries come from $SLUICE_BUILD_DIR (default <repo>/build).

import contextlib
import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

try:
    import psycopg
    from psycopg.conninfo import make_conninfo
    import redis
    from confluent_kafka import (Consumer, KafkaError, KafkaException,
                                 TopicPartition, OFFSET_BEGINNING)
    from confluent_kafka.admin import AdminClient
except ImportError as exc:  # pragma: no cover - environment problem
    raise ImportError(
        f"{exc}: the system tests need the packages of tests/requirements.txt "
        "(run them with <repo>/.venv/bin/pytest tests/system)") from exc

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = Path(os.environ.get("SLUICE_BUILD_DIR", REPO / "build")).resolve()
SCHEMA_DIR = REPO / "schemas"
SERVICES_SH = REPO / "deploy" / "services.sh"

# sluice's PostgreSQL roles (deploy/roles.sh, granted by migration 006):
# the daemons and agents of the tests run as these; the tests themselves
# seed and assert as the cluster's owner (Services.pg_dsn).
PG_WORKER, PG_AGENT, PG_LOOKUP = "sluice_worker", "sluice_agent", "sluice_lookup"


def dsn_as(dsn, role):
    """dsn (a URI or conninfo) with its user replaced by role; the rest
    (database, TLS settings, passfile) kept. A key=value conninfo."""
    return make_conninfo(dsn, user=role)

SOURCE = "tavus"
TRANSCRIPT_READY = "application.transcription_ready"

# Lines in a daemon's stderr that mean it crashed or a sanitizer fired.
CRASH_MARKERS = (
    "AddressSanitizer",
    "LeakSanitizer",
    "ThreadSanitizer",
    "UndefinedBehaviorSanitizer",
    "runtime error:",
    "Segmentation",
)

START_TIMEOUT = float(os.environ.get("SLUICE_TEST_START_TIMEOUT", "60"))
STOP_TIMEOUT = float(os.environ.get("SLUICE_TEST_STOP_TIMEOUT", "60"))


# ---------------------------------------------------------------- helpers

def wait_until(fn, timeout=30.0, interval=0.1, message="condition",
               describe=None):
    """Poll fn() until it returns something truthy; return that value.

    On timeout fail with `message`, describe() when given (the state at
    that moment), and the last value fn() returned (or the last exception it
    raised)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # keep polling; report it if we time out
            last = f"<{type(exc).__name__}: {exc}>"
        if time.monotonic() >= deadline:
            state = ""
            if describe is not None:
                try:
                    state = f"; now: {describe()}"
                except Exception as exc:
                    state = f"; now: <{type(exc).__name__}: {exc}>"
            raise AssertionError(
                f"timed out after {timeout:.0f} s waiting for {message}"
                f"{state}; last value: {last!r}")
        time.sleep(interval)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KINDS = ("transcript", "campaign", "lead_updated", "chat")


def worker_groups(group, pipelines="per_kind", kinds=""):
    """The consumer groups (and keys of sluice_offsets) of a worker run
    with these settings."""
    if pipelines == "shared":
        return [group]
    wanted = [k.strip() for k in kinds.split(",") if k.strip()] or KINDS
    return [f"{group}.{k}" for k in KINDS if k in wanted]


def committed_offsets(services, group, topic, groups=None):
    """{partition: next offset} that every pipeline of the worker has
    committed (the lowest among its groups; a group without a row for a
    partition has committed nothing there)."""
    groups = groups or worker_groups(group)
    rows = services.query(
        "SELECT group_id, partition, next_offset FROM sluice_offsets"
        " WHERE group_id = ANY(%s) AND topic = %s", (list(groups), topic))
    per = {}
    for g, p, o in rows:
        per.setdefault(p, {})[g] = o
    return {p: min(got.get(g, 0) for g in groups) for p, got in per.items()}


def unique_name(request, prefix):
    """t_<testname>_<rand>: a valid Kafka topic / group name, unique."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)
    name = name.removeprefix("test_")[:60].strip("_")
    return f"{prefix}_{name}_{uuid.uuid4().hex[:8]}"


class Response:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers          # lower-cased names
        self.body = body                # bytes
        self.elapsed = elapsed          # seconds
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def __repr__(self):
        text = self.body[:300].decode("utf-8", "replace")
        return f"<HTTP {self.status} {text!r}>"


def _encode(body):
    if body is None or isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8")
    return json.dumps(body).encode("utf-8")


def http_request(port, method, path, body=None, headers=None,
                 content_type="application/json", timeout=30.0, conn=None):
    """One HTTP request; returns a Response.  Uses `conn` when given
    (keep-alive), else a fresh connection closed afterwards."""
    hdrs = {}
    if content_type is not None and body is not None:
        hdrs["Content-Type"] = content_type
    hdrs.update(headers or {})
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=_encode(body), headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        hmap = {k.lower(): v for k, v in r.getheaders()}
        return Response(r.status, hmap, data, time.monotonic() - t0)
    finally:
        if own:
            conn.close()


def raw_request(port, data, timeout=10.0, shut_write=False):
    """Send raw bytes on a fresh connection and parse one response: for
    requests http.client will not form (no Content-Length, lies)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        t0 = time.monotonic()
        s.sendall(data)
        if shut_write:
            s.shutdown(socket.SHUT_WR)
        r = http.client.HTTPResponse(s)
        r.begin()
        body = r.read()
        hmap = {k.lower(): v for k, v in r.getheaders()}
        return Response(r.status, hmap, body, time.monotonic() - t0)


def post(port, body, source=SOURCE, headers=None,
         content_type="application/json", timeout=30.0, conn=None):
    """POST /v1/webhooks/{source}.  body: dict (JSON-encoded), str or bytes
    (sent as is)."""
    return http_request(port, "POST", f"/v1/webhooks/{source}", body,
                        headers, content_type, timeout, conn)


class Client:
    """A keep-alive HTTP client for load from one thread."""

    def __init__(self, port, timeout=30.0):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def post(self, body, retries=0, **kw):
        """POST; on a connection error reconnect and try again up to
        `retries` times, then re-raise."""
        for attempt in range(retries + 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(
                    "127.0.0.1", self.port, timeout=self.timeout)
            try:
                return post(self.port, body, conn=self.conn, **kw)
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == retries:
                    raise
                time.sleep(0.05)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def transcript(cid, entries, event_type=TRANSCRIPT_READY, type_key="event_type",
               replica="r-test"):
    """A transcript callback in the vendor's shape.  entries: list of
    (role, content) or (id, role, content)."""
    items = []
    for e in entries:
        if len(e) == 3:
            items.append({"id": e[0], "role": e[1], "content": e[2]})
        else:
            items.append({"role": e[0], "content": e[1]})
    return {
        "conversation_id": cid,
        type_key: event_type,
        "message_type": "application",
        "timestamp": "2025-05-01T12:00:00.123456Z",
        "properties": {"replica_id": replica, "transcript": items},
    }


def ping_pong(cid):
    """A two-entry transcript with entry ids, for load tests that count
    rows: (webhook id, body)."""
    return f"wh-{cid}", transcript(cid, [(f"{cid}-a", "user", "ping"),
                                         (f"{cid}-b", "assistant", "pong")])


def assert_accepted_in_kafka(services, topic, accepted):
    """Every accepted webhook (webhook id -> conversation id) is a record
    in topic under its conversation's key. Returns every record's
    webhook id -> key."""
    in_kafka = {}
    for rec in services.topic_records(topic):
        wid = rec["headers"].get("webhook-id", b"").decode()
        in_kafka[wid] = rec["key"].decode()
    missing = [w for w in accepted if w not in in_kafka]
    assert not missing, (f"{len(missing)} of {len(accepted)} accepted "
                         f"requests are not in Kafka, e.g. {missing[:5]}")
    wrong = [(w, c, in_kafka[w]) for w, c in accepted.items()
             if in_kafka[w] != c]
    assert not wrong, f"records under the wrong key: {wrong[:5]}"
    return in_kafka


def event(cid, event_type, type_key="event_type"):
    """A lifecycle callback without a transcript."""
    return {
        "conversation_id": cid,
        type_key: event_type,
        "message_type": "system",
        "timestamp": "2025-05-01T12:00:00.000000Z",
        "properties": {"replica_id": "r-test"},
    }


# ---------------------------------------------------------------- Redis keys

def populate_keys(r, cid, pages=10, extra=0):
    """Cache keys of conversation cid as a reader would leave them, set in
    one pipeline: messages:{cid}:{page}:50 for each page, `extra` more
    under the same pattern, and conversation:{cid}. Returns their names."""
    keys = [f"messages:{cid}:{page}:50" for page in range(1, pages + 1)]
    keys += [f"messages:{cid}:x{n}:50" for n in range(extra)]
    keys.append(f"conversation:{cid}")
    with r.pipeline(transaction=False) as p:
        for k in keys:
            p.set(k, b'{"cached":true}')
        p.execute()
    return keys


def post_and_land(pipeline, cid):
    """A two-message transcript of cid posted and its rows landed."""
    r = pipeline.ingest.post(transcript(cid, [("user", "Hi"),
                                              ("assistant", "Hello!")]))
    assert r.status == 202, r
    wait_until(lambda: pipeline.message_count(cid) == 2, 30,
               message=f"2 messages of {cid} in PostgreSQL",
               describe=lambda: f"{pipeline.message_count(cid)} rows; worker "
               f"log tail:\n{pipeline.worker.log_tail(10)}")


def stop_redis_keeping(services, r, tag):
    """Stops Redis after a SAVE, so what the test set comes back with it, as
    in a real restart; returns a sentinel key that tells the dump was
    reloaded."""
    sentinel = f"sentinel:{tag}"
    r.set(sentinel, b"1")
    r.save()
    services.stop_redis()
    return sentinel


def existing_keys(r, keys):
    """Those of keys that Redis still holds."""
    with r.pipeline(transaction=False) as p:
        for k in keys:
            p.exists(k)
        return [k for k, e in zip(keys, p.execute()) if e]


# ---------------------------------------------------------------- services

_TRANSIENT = ("NOT_LEADER", "LEADER_NOT_AVAILABLE", "UNKNOWN_TOPIC",
              "not found: ")


def _transient(exc):
    """A Kafka error that goes away once a new topic's leaders are up."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(
            exc.args[0], KafkaError):
        return any(m in exc.args[0].name() for m in _TRANSIENT)
    return any(m in str(exc) for m in _TRANSIENT)

class Services:
    def __init__(self, directory, env):
        self.dir = Path(directory)
        self.env = env
        self.pg_dsn = env["SLUICE_POSTGRES_DSN"]
        # The roles' DSNs (a services.env from before the roles names none:
        # the owner's with the user swapped).
        self.worker_dsn = env.get("SLUICE_PG_WORKER_DSN") or dsn_as(
            self.pg_dsn, PG_WORKER)
        self.agent_dsn = env.get("SLUICE_PG_AGENT_DSN") or dsn_as(
            self.pg_dsn, PG_AGENT)
        self.lookup_dsn = env.get("SLUICE_PG_LOOKUP_DSN") or dsn_as(
            self.pg_dsn, PG_LOOKUP)
        self.redis_url = env["SLUICE_REDIS_URL"]
        self.brokers = env["SLUICE_KAFKA_BROKERS"]
        self.broken = None      # why the services cannot be used any more

    # -- fault injection
    def _run(self, action, timeout=180):
        r = subprocess.run([str(SERVICES_SH), action, str(self.dir)],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            msg = (f"deploy/services.sh {action} {self.dir} failed "
                   f"({r.returncode}):\n{r.stdout[-2000:]}\n"
                   f"{r.stderr[-4000:]}")
            if action.startswith("start"):
                # Later tests would only time out one by one.
                self.broken = msg
            raise AssertionError(msg)

    def stop_kafka(self):
        self._run("stop-kafka")

    def start_kafka(self):
        self._run("start-kafka")

    def stop_redis(self):
        self._run("stop-redis")

    def start_redis(self):
        self._run("start-redis")

    def stop_postgres(self):
        self._run("stop-postgres")

    def start_postgres(self):
        self._run("start-postgres")

    # -- PostgreSQL
    def query(self, sql, params=None):
        """Rows of one statement, in its own autocommit connection."""
        with psycopg.connect(self.pg_dsn, autocommit=True,
                             connect_timeout=10) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, sql, params=None):
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    # -- Redis
    def redis(self, url=None):
        return redis.Redis.from_url(url or self.redis_url,
                                    socket_timeout=10)

    # -- Kafka
    def watermarks(self, topic, timeout=10.0):
        """{partition: (low, high)} for every partition of topic."""
        c = Consumer({"bootstrap.servers": self.brokers,
                      "group.id": f"probe-{uuid.uuid4().hex}",
                      "enable.auto.commit": False, "log_level": 0})
        try:
            # A topic created a moment ago may not have its leaders yet:
            # those errors pass, so retry them until the timeout.
            deadline = time.monotonic() + timeout
            while True:
                try:
                    md = c.list_topics(topic, timeout=timeout)
                    t = md.topics.get(topic)
                    assert t is not None and t.error is None, (
                        f"topic {topic} not found: {t and t.error}")
                    return {p: c.get_watermark_offsets(
                        TopicPartition(topic, p), timeout=timeout)
                        for p in t.partitions}
                except (KafkaException, AssertionError) as exc:
                    if time.monotonic() >= deadline or not _transient(exc):
                        raise
                    time.sleep(0.2)
        finally:
            c.close()

    def topic_exists(self, topic):
        md = AdminClient({"bootstrap.servers": self.brokers,
                          "log_level": 0}).list_topics(timeout=10)
        return topic in md.topics

    def dlq_count(self, topic):
        """Records in the dead-letter topic of `topic` (0 if none exists)."""
        dlq = f"{topic}.dlq"
        return self.topic_count(dlq) if self.topic_exists(dlq) else 0

    def topic_count(self, topic):
        """Records in topic (high - low, summed over partitions)."""
        return sum(hi - lo for lo, hi in self.watermarks(topic).values())

    def topic_records(self, topic, timeout=30.0):
        """Every record in topic, read from the beginning with no group
        commit: list of dicts(partition, offset, key, value, headers)."""
        marks = self.watermarks(topic)
        want = {p: hi for p, (lo, hi) in marks.items() if hi > lo}
        out = []
        if not want:
            return out
        c = Consumer({"bootstrap.servers": self.brokers,
                      "group.id": f"reader-{uuid.uuid4().hex}",
                      "enable.auto.commit": False,
                      "enable.partition.eof": False, "log_level": 0})
        try:
            c.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                      for p in want])
            pos = {p: marks[p][0] for p in want}
            deadline = time.monotonic() + timeout
            while any(pos[p] < want[p] for p in want):
                assert time.monotonic() < deadline, (
                    f"reading {topic}: got to {pos}, watermarks {want}")
                msgs = c.consume(num_messages=1000, timeout=0.5)
                for m in msgs:
                    if m.error():
                        continue
                    p = m.partition()
                    pos[p] = m.offset() + 1
                    if m.offset() >= want[p]:
                        continue
                    out.append({
                        "partition": p,
                        "offset": m.offset(),
                        "key": m.key(),
                        "value": m.value(),
                        "headers": {k: v for k, v in (m.headers() or [])},
                        "header_list": m.headers() or [],
                    })
        finally:
            c.close()
        return out

    def kafka_up(self, timeout=5.0):
        try:
            AdminClient({"bootstrap.servers": self.brokers,
                         "log_level": 0}).list_topics(timeout=timeout)
            return True
        except Exception:
            return False


def _read_env_file(path):
    env = {}
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        parts = shlex.split(value)
        env[key.strip()] = parts[0] if parts else ""
    return env


@contextlib.contextmanager
def running_services(tmp_path_factory):
    """The Services of $SLUICE_TEST_SERVICES_DIR when set (left running);
    else deploy/services.sh start in a new temporary directory, and stop
    on exit."""
    reuse = os.environ.get("SLUICE_TEST_SERVICES_DIR")
    if reuse:
        env = _read_env_file(Path(reuse) / "services.env")
        yield Services(reuse, env)
        return
    assert SERVICES_SH.exists(), f"{SERVICES_SH} is missing"
    d = tmp_path_factory.mktemp("services")
    started = False
    try:
        r = subprocess.run([str(SERVICES_SH), "start", str(d)],
                           capture_output=True, text=True, timeout=600)
        started = True
        assert r.returncode == 0, (
            f"deploy/services.sh start failed ({r.returncode}):\n"
            f"{r.stdout[-3000:]}\n{r.stderr[-6000:]}")
        env = _read_env_file(d / "services.env")
        for k in ("SLUICE_POSTGRES_DSN", "SLUICE_REDIS_URL",
                  "SLUICE_KAFKA_BROKERS"):
            assert k in env, f"{d}/services.env lacks {k}: {env}"
        yield Services(d, env)
    finally:
        if started:
            subprocess.run([str(SERVICES_SH), "stop", str(d)],
                           capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- daemons

class Daemon:
    """One sluice binary run from a config file, stderr to a log file."""

    def __init__(self, kind, config, log, env):
        self.kind = kind                  # "ingest" | "worker"
        self.config = config
        self.log = log
        self.binary = BUILD_DIR / f"sluice-{kind}"
        if not self.binary.exists():
            pytest.fail(f"{self.binary} does not exist: run `make` "
                        "(or set SLUICE_BUILD_DIR)")
        self.env = env
        self.proc = None
        self.returncode = None
        self.killed = False               # SIGKILLed on purpose
        self.log_offset = 0
        self.preexec = None               # run in the child before exec

    def start(self):
        # Append: a restarted daemon keeps writing the same log.
        self.log_offset = self.log.stat().st_size if self.log.exists() else 0
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "-c", str(self.config)],
            stdin=subprocess.DEVNULL, stdout=self._logf, stderr=self._logf,
            env=self.env, preexec_fn=self.preexec)
        self.returncode = None
        self.killed = False
        return self

    @property
    def pid(self):
        return self.proc.pid

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, since_start=False):
        try:
            data = self.log.read_bytes()
        except FileNotFoundError:
            return ""
        if since_start:
            data = data[self.log_offset:]
        return data.decode("utf-8", "replace")

    def log_tail(self, n=40):
        return "\n".join(self.log_text().splitlines()[-n:])

    def assert_alive(self):
        if not self.running():
            pytest.fail(f"sluice-{self.kind} exited with "
                        f"{self.proc.returncode}; log tail:\n{self.log_tail()}")

    def wait_log(self, pattern, timeout=START_TIMEOUT):
        rx = re.compile(pattern)

        def seen():
            self.assert_alive()
            return rx.search(self.log_text(since_start=True))
        wait_until(seen, timeout, 0.1,
                   f"sluice-{self.kind} to log /{pattern}/")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM and wait; return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout=STOP_TIMEOUT):
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._logf.close()
            pytest.fail(f"sluice-{self.kind} did not exit within {timeout} s "
                        f"of SIGTERM; log tail:\n{self.log_tail()}")
        self._logf.close()
        return self.returncode

    def kill9(self):
        self.killed = True
        self.proc.kill()
        self.proc.wait()
        self.returncode = self.proc.returncode
        self._logf.close()

    def crash_lines(self):
        return [line for line in self.log_text().splitlines()
                if any(m in line for m in CRASH_MARKERS)]


class IngestDaemon(Daemon):
    def __init__(self, config, log, env, port):
        super().__init__("ingest", config, log, env)
        self.port = port

    def start(self, wait=True):
        super().start()
        if wait:
            def healthy():
                self.assert_alive()
                try:
                    return http_request(self.port, "GET", "/healthz",
                                        timeout=2).status == 200
                except OSError:
                    return False
            wait_until(healthy, START_TIMEOUT, 0.1,
                       "sluice-ingest to answer GET /healthz with 200")
        return self

    def post(self, body, **kw):
        return post(self.port, body, **kw)

    def request(self, method, path, body=None, **kw):
        return http_request(self.port, method, path, body, **kw)


class WorkerDaemon(Daemon):
    def __init__(self, config, log, env):
        super().__init__("worker", config, log, env)

    def start(self, wait=True):
        super().start()
        if wait:
            # Joined the group and got partitions: records sent from now on
            # are consumed whatever the offset-reset policy.
            self.wait_log(r"assigned")
        return self

    def batch_totals(self):
        """(sum of `saved N messages`, sum of `skipped D duplicates`) over
        the whole log."""
        text = self.log_text()
        saved = sum(int(n) for n in re.findall(r"saved (\d+) messages", text))
        skipped = sum(int(n) for n in
                      re.findall(r"skipped (\d+) duplicates", text))
        return saved, skipped


def _format_config(settings):
    lines = []
    for k, v in settings.items():
        if v is None:
            continue
        v = str(v)
        if re.search(r'[\s#"]', v) or v == "":
            v = '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{k} = {v}")
    return "\n".join(lines) + "\n"


class Pipeline:
    """Per-test: a unique topic, group and conversation-id prefix; configs
    and daemons on demand; teardown checks every daemon."""

    def __init__(self, request, services, tmp_path):
        self.services = services
        self.tmp = tmp_path
        self.topic = unique_name(request, "t")
        self.group = unique_name(request, "g")
        self.prefix = f"c-{uuid.uuid4().hex[:10]}-"
        self.daemons = []
        self.ingest = None
        self.worker = None
        self.last_worker_settings = None
        self._n = 0
        # The connection points come from the config files alone: drop any
        # SLUICE_* variable so the environment cannot redirect a daemon.
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith("SLUICE_")}

    def cid(self, name=""):
        """A conversation id unique to this test."""
        self._n += 1
        return f"{self.prefix}{name or self._n}"

    def _write(self, name, settings):
        path = self.tmp / name
        path.write_text(_format_config(settings))
        return path

    def ingest_settings(self, **over):
        s = {
            "listen": f"127.0.0.1:{free_port()}",
            "brokers": self.services.brokers,
            "topic": self.topic,
            "topic_partitions": 4,
            "delivery_timeout_ms": 5000,
            "schema_dir": str(SCHEMA_DIR),
            "log_level": "info",
            f"source.{SOURCE}.kind": "transcript",
            f"source.{SOURCE}.signature": "none",
        }
        s.update({k.replace("__", "."): v for k, v in over.items()})
        return s

    def worker_settings(self, **over):
        """The worker's config: its writes as sluice_worker and its lead
        lookups as sluice_lookup, in the database of postgres_dsn (an
        override names another: lookups follow it unless
        lead_context__postgres_dsn is given too)."""
        s = {
            "brokers": self.services.brokers,
            "topic": self.topic,
            "topic_partitions": 4,
            "group_id": self.group,
            "postgres_dsn": self.services.worker_dsn,
            "redis_url": self.services.redis_url,
            "log_level": "info",
        }
        over = {k.replace("__", "."): v for k, v in over.items()}
        s.update(over)
        if "lead_context.postgres_dsn" not in over and s["postgres_dsn"]:
            s["lead_context.postgres_dsn"] = dsn_as(s["postgres_dsn"],
                                                    PG_LOOKUP)
        return s

    def start_ingest(self, wait=True, **over):
        """Start sluice-ingest; keyword overrides set config keys
        (use __ for a dot: source__x__kind)."""
        s = self.ingest_settings(**over)
        i = len([d for d in self.daemons if d.kind == "ingest"])
        cfg = self._write(f"ingest{i}.conf", s)
        port = int(s["listen"].rsplit(":", 1)[1])
        d = IngestDaemon(cfg, self.tmp / f"ingest{i}.log", self.env, port)
        self.daemons.append(d)
        self.ingest = d
        return d.start(wait=wait)

    def start_worker(self, wait=True, **over):
        s = self.worker_settings(**over)
        self.last_worker_settings = s
        i = len([d for d in self.daemons if d.kind == "worker"])
        cfg = self._write(f"worker{i}.conf", s)
        # Restarts of the same worker share a log, so the "saved/skipped"
        # totals and crash checks cover every run.
        d = WorkerDaemon(cfg, self.tmp / f"worker{i}.log", self.env)
        self.daemons.append(d)
        self.worker = d
        return d.start(wait=wait)

    def restart(self, daemon, wait=True):
        """Start `daemon` again from the same config, appending to its log."""
        assert not daemon.running(), "restart() of a daemon still running"
        return daemon.start(wait=wait)

    # -- effects in PostgreSQL
    def messages(self, cid):
        """[(position, role, content, external_event_id)] of a conversation,
        by position."""
        return self.services.query(
            "SELECT position, role, content, external_event_id FROM messages"
            " WHERE conversation_id = %s ORDER BY position, id", (cid,))

    def conversation(self, cid):
        rows = self.services.query(
            "SELECT id, source, last_event_type, transcript_received,"
            " transcript_received_at FROM conversations WHERE id = %s",
            (cid,))
        if not rows:
            return None
        keys = ("id", "source", "last_event_type", "transcript_received",
                "transcript_received_at")
        return dict(zip(keys, rows[0]))

    def message_count(self, cid=None):
        if cid is not None:
            return self.services.scalar(
                "SELECT count(*) FROM messages WHERE conversation_id = %s",
                (cid,))
        return self.services.scalar(
            "SELECT count(*) FROM messages"
            " WHERE starts_with(conversation_id, %s)", (self.prefix,))

    def duplicates(self):
        return self.services.query(
            "SELECT conversation_id, external_event_id, count(*)"
            " FROM messages WHERE starts_with(conversation_id, %s)"
            " GROUP BY 1, 2 HAVING count(*) > 1 LIMIT 20", (self.prefix,))

    def committed_offsets(self):
        return committed_offsets(self.services, self.group, self.topic,
                                 self.worker_groups())

    def worker_groups(self):
        """The consumer groups of the last worker started: one per kind
        (<group>.<kind>, the default pipelines = per_kind), or the group
        itself (pipelines = shared)."""
        s = self.last_worker_settings or {}
        return worker_groups(s.get("group_id", self.group),
                             s.get("pipelines", "per_kind"),
                             s.get("kinds", ""))

    def wait_caught_up(self, timeout=60.0):
        """Wait until the worker's committed offsets (sluice_offsets) reach
        the topic's high watermarks: everything sent so far is processed."""
        def caught_up():
            if self.worker is not None and not self.worker.killed:
                self.worker.assert_alive()
            marks = self.services.watermarks(self.topic)
            done = self.committed_offsets()
            behind = {p: (done.get(p), hi) for p, (lo, hi) in marks.items()
                      if hi > lo and done.get(p, 0) < hi}
            return True if not behind else None
        wait_until(caught_up, timeout, 0.2,
                   f"the worker (group {self.group}) to commit offsets up to "
                   f"the high watermarks of {self.topic}")

    # -- teardown
    def check_daemons(self):
        problems = []
        for d in self.daemons:
            if d.proc is None:
                continue
            if d.running():
                try:
                    rc = d.stop()
                except BaseException as exc:  # pytest.fail on timeout
                    problems.append(str(exc))
                    continue
                if rc != 0:
                    problems.append(
                        f"sluice-{d.kind} exited {rc} after SIGTERM "
                        f"(log {d.log}); tail:\n{d.log_tail()}")
            elif d.returncode is None:
                problems.append(
                    f"sluice-{d.kind} died by itself with "
                    f"{d.proc.returncode} (log {d.log}); tail:\n"
                    f"{d.log_tail()}")
            elif not d.killed and d.returncode != 0:
                problems.append(
                    f"sluice-{d.kind} exited {d.returncode} after SIGTERM "
                    f"(log {d.log}); tail:\n{d.log_tail()}")
            crash = d.crash_lines()
            if crash:
                problems.append(
                    f"sluice-{d.kind} log {d.log} holds a crash/sanitizer "
                    f"report:\n" + "\n".join(crash[:20]) +
                    "\n--- tail:\n" + d.log_tail(60))
        return problems


def run_threads(n, target, *args):
    """Run target(i, *args) on n threads; re-raise the first exception."""
    errors = []

    def wrap(i):
        try:
            target(i, *args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=wrap, args=(i,), daemon=True)
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def produce_record(brokers, topic, key, value, headers):
    """One record straight into topic, around the front door: key a str,
    value bytes, headers (name, str) pairs."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": brokers})
    p.produce(topic, key=key.encode(), value=value,
              headers=[(k, v.encode()) for k, v in headers])
    assert p.flush(30) == 0


def worker_cmd(pipeline, mode, *args, timeout=120, **over):
    """`sluice-worker MODE -c CFG ARGS` with the pipeline's worker
    settings (and overrides), checked for sanitizer reports; the
    CompletedProcess."""
    cfg = pipeline._write(f"{mode}-{uuid.uuid4().hex[:6]}.conf",
                          pipeline.worker_settings(**over))
    r = subprocess.run([str(BUILD_DIR / "sluice-worker"), mode, "-c",
                        str(cfg), *args], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout,
                       env=pipeline.env)
    for marker in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
        assert marker not in r.stderr, r.stderr[-4000:]
    return r
