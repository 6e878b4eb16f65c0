# systemd: the units as `make install` writes them pass `systemd-analyze
# verify` without a warning, and both daemons speak the notification
# protocol the units rely on (Type=notify, NotifyAccess=main, WatchdogSec):
# READY=1, STATUS=..., WATCHDOG=1 at the pace WATCHDOG_USEC asks, STOPPING=1
# after SIGTERM, all from the main process, then exit 0.

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import pytest

from pkg_util import make_install

UNITS = ("sluice-ingest.service", "sluice-worker@.service")
WATCHDOG_USEC = 2_000_000      # the daemons ping every second
OBSERVE_S = 4.5                # long enough for a few pings


# ------------------------------------------------------------ verify ----

@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A `make install` into a temporary prefix: the units' ExecStart=
    names binaries that exist, and their man pages are on a MANPATH."""
    if not shutil.which("systemd-analyze"):
        pytest.fail("systemd-analyze is missing: run deploy/install-deps.sh")
    prefix = tmp_path_factory.mktemp("install") / "prefix"
    make_install(prefix)
    return prefix


def verify(installed, *units):
    unitdir = installed / "lib/systemd/system"
    env = {**os.environ, "MANPATH": str(installed / "share/man"),
           "SYSTEMD_LOG_COLOR": "0"}
    # Instances are found through the unit path; the paths of the files
    # themselves are given as they are.
    env["SYSTEMD_UNIT_PATH"] = f"{unitdir}:"
    return subprocess.run(["systemd-analyze", "verify", *units],
                          capture_output=True, text=True, timeout=120,
                          env=env, cwd=unitdir)


def test_units_verify_clean(installed):
    r = verify(installed, *(f"./{u}" for u in UNITS), "sluice-worker@1.service",
               "sluice-worker@7.service")
    out = (r.stdout + r.stderr).strip()
    assert r.returncode == 0, f"systemd-analyze verify failed:\n{out}"
    assert "sluice" not in out, f"systemd-analyze verify warns:\n{out}"


def test_verify_catches_a_broken_unit(installed, tmp_path):
    """The check above can fail: a missing binary and an unknown setting
    fail verify; a bad specifier only warns (exit 0), which the check
    above also refuses."""
    unitdir = installed / "lib/systemd/system"
    bad = tmp_path / "sluice-broken.service"
    bad.write_text((unitdir / "sluice-ingest.service").read_text()
                   .replace(str(installed / "bin/sluice-ingest"),
                            str(tmp_path / "no-such-binary"))
                   .replace("NotifyAccess=main", "NotifyAcces=main"))
    r = verify(installed, str(bad))
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "no-such-binary" in out, out
    assert "NotifyAcces" in out, out

    warn = tmp_path / "sluice-warn@.service"
    warn.write_text((unitdir / "sluice-worker@.service").read_text()
                    .replace("sluice-worker@%i", "sluice-worker@%z"))
    r = verify(installed, str(warn))
    assert "sluice-warn@" in r.stdout + r.stderr, r.stdout + r.stderr


def test_units_exposure(installed):
    """`systemd-analyze security` rates what the hardening leaves exposed
    (0 best, 10 worst); both units stay at 2 or below."""
    unitdir = installed / "lib/systemd/system"
    for u in UNITS:
        r = subprocess.run(["systemd-analyze", "security", "--offline=yes",
                            "--no-pager", f"./{u}"], capture_output=True,
                           text=True, timeout=60, cwd=unitdir)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)",
                      r.stdout + r.stderr)
        assert m, r.stdout + r.stderr
        assert float(m.group(1)) <= 2.0, f"{u}: {m.group(0)}"


def test_unit_settings(installed):
    unitdir = installed / "lib/systemd/system"
    for u in UNITS:
        text = (unitdir / u).read_text()
        settings = {}
        for line in text.splitlines():
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                settings.setdefault(k, []).append(v)
        for k, v in {"Type": "notify", "NotifyAccess": "main",
                     "Restart": "on-failure", "KillSignal": "SIGTERM",
                     "NoNewPrivileges": "yes", "ProtectSystem": "strict",
                     "CapabilityBoundingSet": "",
                     "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
                     "User": "sluice"}.items():
            assert settings.get(k) == [v], f"{u}: {k}={settings.get(k)}"
        for k in ("WatchdogSec", "TimeoutStopSec", "LimitNOFILE"):
            assert k in settings, f"{u} has no {k}"
    worker = (unitdir / "sluice-worker@.service").read_text()
    assert "Environment=SLUICE_GROUP_INSTANCE_ID=sluice-worker@%i" in worker
    assert "EnvironmentFile=-/etc/sluice/worker-%i.env" in worker


SECRET_KEY = re.compile(r"^#?\s*([\w.]*(?:secret_file|token_file|"
                        r"api_key_file|password_file))\s*=\s*(\S+)", re.M)


def test_secrets_come_as_credentials(installed):
    """No secret in a unit's Environment= or ExecStart=: each unit loads
    its own directory of secret files as systemd credentials
    (docs/configuration.md#secrets), and the example configs name every
    secret file by its credential's bare name, with that unit's prefix."""
    unitdir = installed / "lib/systemd/system"
    examples = installed / "share/doc/sluice/examples"
    for u, who in (("sluice-ingest.service", "ingest"),
                   ("sluice-worker@.service", "worker")):
        lines = [ln for ln in (unitdir / u).read_text().splitlines()
                 if not ln.startswith("#")]
        creds = [ln for ln in lines if ln.startswith("LoadCredential")]
        assert creds == [f"LoadCredential={who}:/etc/sluice/secrets/{who}"], \
            f"{u}: {creds}"
        for ln in lines:
            if ln.startswith(("Environment=", "ExecStart=")):
                assert not re.search(r"(?i)pass|secret|token|key|://[^/]*@",
                                     ln), f"{u}: {ln}"
        conf = (examples / f"{who}.conf").read_text()
        keys = SECRET_KEY.findall(conf)
        assert len(keys) >= 3, f"{who}.conf: {keys}"
        for k, v in keys:
            assert "/" not in v and v.startswith(f"{who}_"), \
                f"{who}.conf: {k} = {v} is not one of {u}'s credentials"
        env = (examples / f"{who}.env").read_text()
        assert not re.search(r"://[^/@\s]*:[^/@\s]*@", env), env


# ------------------------------------------------------------ notify ----

class NotifySocket:
    """The receiving end of NOTIFY_SOCKET, with each sender's pid."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sluice-notify-", dir="/tmp")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages = []         # (monotonic time, pid, text)

    def read(self, seconds):
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, anc, _, _ = self.sock.recvmsg(
                    4096, socket.CMSG_SPACE(struct.calcsize("3i")))
            except socket.timeout:
                break
            pid = None
            for level, kind, cdata in anc:
                if level == socket.SOL_SOCKET and \
                        kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", cdata[:12])[0]
            self.messages.append((time.monotonic(), pid,
                                  data.decode("utf-8", "replace")))

    def wait_for(self, text, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if any(m == text for _, _, m in self.messages):
                return
            self.read(0.2)
        pytest.fail(f"no {text} on the notify socket within {timeout} s; "
                    f"got {[m for _, _, m in self.messages]}")

    def close(self):
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def notify(pipeline):
    n = NotifySocket()
    pipeline.env["NOTIFY_SOCKET"] = n.path
    pipeline.env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    yield n
    n.close()


def check_protocol(daemon, notify):
    notify.wait_for("READY=1", 60)
    notify.read(OBSERVE_S)
    before_stop = len(notify.messages)
    daemon.signal(signal.SIGTERM)
    code = daemon.wait()
    notify.read(0.3)               # anything still queued
    msgs = notify.messages
    texts = [m for _, _, m in msgs]
    assert code == 0, f"exit {code}; log:\n{daemon.log_tail()}"

    # Every message comes from the main process (NotifyAccess=main).
    assert {pid for _, pid, _ in msgs} == {daemon.pid}, msgs

    # READY=1 -> STATUS=... -> WATCHDOG=1 -> STOPPING=1, and STOPPING only
    # once SIGTERM was sent.
    def first(pred, start=0):
        for i in range(start, len(texts)):
            if pred(texts[i]):
                return i
        pytest.fail(f"sequence broken after #{start}: {texts}")
    ready = first(lambda t: t == "READY=1")
    status = first(lambda t: t.startswith("STATUS=") and len(t) > 7, ready + 1)
    wd = first(lambda t: t == "WATCHDOG=1", status + 1)
    stopping = first(lambda t: t == "STOPPING=1", wd + 1)
    assert stopping >= before_stop, "STOPPING=1 before SIGTERM"
    assert texts.count("READY=1") == 1 and texts.count("STOPPING=1") == 1, texts
    assert "WATCHDOG=1" not in texts[:ready], "WATCHDOG=1 before READY=1"

    # systemd kills a service silent for WatchdogSec: pings come at least
    # that often (the daemons aim at half of it).
    pings = [t for t, _, m in msgs[:before_stop] if m == "WATCHDOG=1"]
    assert len(pings) >= 3, f"{len(pings)} pings in {OBSERVE_S} s: {texts}"
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"watchdog gaps {gaps}"


def test_worker_notify_protocol(pipeline, notify):
    worker = pipeline.start_worker()
    check_protocol(worker, notify)


def test_ingest_notify_protocol(pipeline, notify):
    ingest = pipeline.start_ingest()
    check_protocol(ingest, notify)
