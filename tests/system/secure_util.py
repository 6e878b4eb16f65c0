# Helpers of the security tests (docs/security.md): the secure broker and
# the TLS-only PostgreSQL of deploy/services.sh, a TLS-only Redis with the
# doc's ACL user behind stunnel4 tunnels, the Kafka client settings of a
# principal, and an HTTPS client for sluice-ingest. Each service is started
# by the caller's fixture, which decides its scope.

import contextlib
import http.client
import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import redis

from harness import (REPO, SERVICES_SH, Response, _read_env_file,
                     free_port, wait_until)

DOC = REPO / "docs" / "security.md"
TESTCA = REPO / "deploy" / "testca.sh"
STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")
# The broker's topic; the worker's group must start with sluice-worker
# (the PREFIXED group ACL of docs/security.md).
TOPIC = "sluice.events"


def secret_file(path, text):
    """A secret written as sluice wants it: mode 0600 from the start."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return path


# ---------------------------------------------------------------- Kafka

class SecureKafka:
    def __init__(self, d, env, libs):
        self.dir = d
        self.brokers = env["SLUICE_KAFKA_BROKERS"]
        self.ca = env["SLUICE_KAFKA_CA"]
        self.secrets = env["SLUICE_KAFKA_SECRETS"]
        self.admin_config = env["SLUICE_KAFKA_ADMIN_CONFIG"]
        self.libs = libs

    def password_file(self, user):
        return os.path.join(self.secrets, f"{user}.password")

    def acls(self, *args):
        """kafka-acls.sh ARGS as the admin; its stdout."""
        r = subprocess.run(
            ["java", "-Xmx256m", "-XX:TieredStopAtLevel=1",
             "-XX:+UseSerialGC", "-cp", f"{self.libs}/*",
             "kafka.admin.AclCommand", "--bootstrap-server", self.brokers,
             "--command-config", self.admin_config, *args],
            capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (
            f"kafka-acls {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
        return r.stdout


def _services(action, d, timeout, **env):
    r = subprocess.run([str(SERVICES_SH), action, str(d)],
                       env=dict(os.environ, **env), capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, (
        f"services.sh {action} {env} failed:\n{r.stdout[-2000:]}"
        f"\n{r.stderr[-4000:]}")


def start_secure_kafka(d):
    """The SASL_SSL broker with the doc's ACLs in d (stop it with
    stop_services(d))."""
    _services("start-kafka", d, 600, SLUICE_KAFKA_SECURE="1")
    libs = subprocess.run(
        [str(REPO / "deploy" / "kafka" / "fetch.sh"), "--print-dir"],
        capture_output=True, text=True, check=True).stdout.strip()
    return SecureKafka(d, _read_env_file(Path(d) / "services.env"), libs)


def stop_services(d, destroy=False):
    subprocess.run([str(SERVICES_SH), "destroy" if destroy else "stop",
                    str(d)], capture_output=True, text=True, timeout=300)


def kafka_client(secure, user, password_file=None, ca=None):
    """The settings of principal `user` on the secure broker."""
    return {
        "topic_partitions": 0,
        "kafka__security.protocol": "SASL_SSL",
        "kafka__sasl.mechanisms": "SCRAM-SHA-512",
        "kafka__sasl.username": user,
        "kafka_sasl_password_file": password_file or
        secure.password_file(user),
        "kafka__ssl.ca.location": ca or secure.ca,
    }


# ---------------------------------------------------------------- PostgreSQL

class TlsPostgres:
    def __init__(self, directory, env):
        self.dir = Path(directory)
        self.owner_dsn = env["SLUICE_POSTGRES_DSN"]
        self.worker_dsn = env["SLUICE_PG_WORKER_DSN"]
        self.agent_dsn = env["SLUICE_PG_AGENT_DSN"]
        self.lookup_dsn = env["SLUICE_PG_LOOKUP_DSN"]
        self.ca = env["SLUICE_PG_CA"]
        self.port = int(env["SLUICE_PG_PORT"])
        self.owner = env["SLUICE_PG_USER"]
        assert env["SLUICE_PG_TLS"] == "1", env

    def query(self, sql, params=None, dsn=None):
        with psycopg.connect(dsn or self.owner_dsn, autocommit=True,
                             connect_timeout=10) as c:
            cur = c.execute(sql, params)
            return cur.fetchall() if cur.description else []


def start_tls_postgres(d):
    """The TLS-only cluster (hostssl, verify-full, the three roles) in d,
    migrated."""
    _services("start-postgres", d, 300, SLUICE_PG_TLS="1")
    return TlsPostgres(d, _read_env_file(Path(d) / "services.env"))


def process_ports(pid):
    """The local TCP ports of process pid's sockets (its connections)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            t = os.readlink(fd)
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes:
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def sessions_of(query, pid):
    """(user, ssl) of every PostgreSQL session the process pid holds."""
    ports = sorted(process_ports(pid))
    return query(
        "SELECT a.usename, s.ssl FROM pg_stat_activity a"
        " JOIN pg_stat_ssl s USING (pid) WHERE a.client_port = ANY(%s)",
        (ports,))


# ---------------------------------------------------------------- Redis

ADMIN_PASSWORD = "admin-" + uuid.uuid4().hex
SLUICE_PASSWORD = "sluice-" + uuid.uuid4().hex


def acl_line():
    """The doc's one ACL SETUSER line, as it is written there."""
    lines = [ln.strip() for ln in DOC.read_text().splitlines()
             if ln.strip().startswith("ACL SETUSER sluice ")]
    assert len(lines) == 1, f"docs/security.md: {len(lines)} ACL lines"
    return lines[0]


def wait_port(port, timeout=15.0):
    def up():
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            return False
    wait_until(up, timeout, message=f"127.0.0.1:{port} to listen")


class TlsRedis:
    """redis-server with TLS only, an admin password on the default user,
    and the doc's user; stunnel tunnels (client mode) in front of it."""

    def __init__(self, d):
        self.dir = d
        subprocess.run([str(TESTCA), str(d), "redis"], check=True)
        self.ca = d / "ca.crt"
        self.tls_port = free_port()
        self.log = d / "redis.log"
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.tls_port),
             "--tls-cert-file", str(d / "redis.crt"),
             "--tls-key-file", str(d / "redis.key"),
             "--tls-ca-cert-file", str(self.ca),
             "--tls-auth-clients", "no", "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(d),
             "--requirepass", ADMIN_PASSWORD, "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.tunnels = []
        wait_port(self.tls_port)
        admin = self.admin()
        wait_until(lambda: admin.ping(), 10, message="redis over TLS")
        line = acl_line().replace(">PASSWORD", ">" + SLUICE_PASSWORD)
        assert admin.execute_command(*shlex.split(line)) in (b"OK", "OK",
                                                                  True)

    def admin(self):
        return redis.Redis(host="127.0.0.1", port=self.tls_port, ssl=True,
                           ssl_ca_certs=str(self.ca), ssl_check_hostname=True,
                           password=ADMIN_PASSWORD, socket_timeout=5)

    def tunnel(self, ca):
        """A stunnel4 client tunnel to the TLS port that trusts `ca`;
        returns its loopback port."""
        port = free_port()
        name = f"tunnel{len(self.tunnels)}"
        conf = self.dir / f"{name}.conf"
        conf.write_text(
            "foreground = yes\n"
            "pid =\n"
            f"output = {self.dir / (name + '.log')}\n"
            f"[{name}]\n"
            "client = yes\n"
            f"accept = 127.0.0.1:{port}\n"
            f"connect = 127.0.0.1:{self.tls_port}\n"
            "verifyChain = yes\n"
            f"CAfile = {ca}\n"
            "checkHost = localhost\n"
            "sslVersionMin = TLSv1.2\n")
        self.tunnels.append(subprocess.Popen(
            [STUNNEL, str(conf)], stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT))
        wait_port(port)
        return port

    def user_url(self, port):
        """The worker's redis_url: the ACL user through tunnel `port`."""
        return f"redis://sluice:{SLUICE_PASSWORD}@127.0.0.1:{port}/0"

    def stop(self):
        for p in self.tunnels + [self.proc]:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# ---------------------------------------------------------------- HTTPS

def client_context(ca):
    """A client that trusts the test CA only and checks the host name."""
    return ssl.create_default_context(cafile=str(ca))


def https_request(port, ctx, method, path, body=None, headers=None,
                  content_type="application/json", timeout=30.0):
    """harness.http_request over TLS: a Response."""
    h = {}
    if body is not None and content_type is not None:
        h["Content-Type"] = content_type
    h.update(headers or {})
    if body is not None and not isinstance(body, bytes):
        body = (body if isinstance(body, str) else json.dumps(body)
                ).encode("utf-8")
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx,
                                       timeout=timeout)
    t0 = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()},
                        data, time.monotonic() - t0)
    finally:
        conn.close()


class HttpsIngest:
    """An ingest daemon whose `listen` is HTTPS only, with the post() and
    request() of harness.IngestDaemon, so the campaign and chat helpers
    post through it unchanged."""

    def __init__(self, daemon, ca):
        self.daemon = daemon
        self.port = daemon.port
        self.ctx = client_context(ca)

    def wait_healthy(self, timeout=60):
        def healthy():
            self.daemon.assert_alive()
            with contextlib.suppress(OSError, http.client.HTTPException):
                return self.request("GET", "/healthz",
                                    timeout=2).status == 200
            return False
        wait_until(healthy, timeout, 0.2,
                   "sluice-ingest to answer GET /healthz over HTTPS",
                   describe=lambda: self.daemon.log_tail(10))
        return self

    def request(self, method, path, body=None, **kw):
        return https_request(self.port, self.ctx, method, path, body, **kw)

    def post(self, body, source="tavus", headers=None, **kw):
        return self.request("POST", f"/v1/webhooks/{source}", body,
                            headers=headers, **kw)

    def __getattr__(self, name):
        return getattr(self.daemon, name)
