# What the sluice benchmarks share: free ports, readiness, private services, the daemons.
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.environ.get("SLUICE_BUILD_DIR", os.path.join(REPO, "build"))
SERVICES_SH = os.path.join(REPO, "deploy", "services.sh")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_http(url, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"not ready: {url}")


def start_services(tmp, existing=None):
    """(DIR, env): the services running in `existing`, or private ones
    started in tmp/svc; env is os.environ with DIR/services.env on top."""
    svc = existing or os.path.join(tmp, "svc")
    if not existing:
        subprocess.run([SERVICES_SH, "start", svc], check=True)
    env = dict(os.environ)
    with open(os.path.join(svc, "services.env")) as f:
        for line in f:
            m = re.match(r"export (\w+)=(.*)", line.strip())
            if m:
                v = shlex.split(m.group(2))   # services.sh quotes with %q
                env[m.group(1)] = v[0] if v else ""
    return svc, env


def end_services(tmp, svc, existing=None):
    """Destroy the private services (never `existing` ones), then remove
    tmp unless SLUICE_BENCH_KEEP is set."""
    if not existing:
        subprocess.run([SERVICES_SH, "destroy", svc])
    if os.environ.get("SLUICE_BENCH_KEEP"):
        print(f"logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def as_role(dsn, role):
    """dsn with its user replaced by one of sluice's PostgreSQL roles
    (deploy/roles.sh): sluice_worker, sluice_agent, sluice_lookup."""
    from psycopg.conninfo import make_conninfo
    return make_conninfo(dsn, user=role)


def daemon(name, conf, env, log):
    """Start build/NAME (sluice-ingest, sluice-worker) on CONF, stderr to LOG.
    The worker runs as sluice_worker, in the database SLUICE_POSTGRES_DSN
    names (the variable overrides the file's postgres_dsn)."""
    if name == "sluice-worker" and env.get("SLUICE_POSTGRES_DSN"):
        env = dict(env, SLUICE_POSTGRES_DSN=as_role(env["SLUICE_POSTGRES_DSN"],
                                                    "sluice_worker"))
    return subprocess.Popen([os.path.join(BUILD, name), "-c", conf], env=env,
                            stderr=open(log, "w"))


def stop(proc, timeout=60):
    """SIGTERM, then SIGKILL if it is still running after `timeout` s."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
