# What the sluice benchmarks share: free ports, readiness, private services, the daemons.
import os
import re
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
                env[m.group(1)] = m.group(2)
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


def daemon(name, conf, env, log):
    """Start build/NAME (sluice-ingest, sluice-worker) on CONF, stderr to LOG."""
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
