# The worker's /readyz and watchdog when a service goes away: Redis down
# and back, PostgreSQL down for longer than the watchdog interval while a
# batch retries, Kafka down and back. These stop services, so run this
# file without SLUICE_TEST_SERVICES_DIR (the session fixture then starts a
# private stack).

import os
import socket
import tempfile
import threading
import time

import pytest

from harness import free_port, http_request, transcript, wait_until
from test_worker_http import scrape, val

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("SLUICE_TEST_SERVICES_DIR")),
    reason="stops services: needs a private stack (unset "
           "SLUICE_TEST_SERVICES_DIR)")


def readyz(port):
    return http_request(port, "GET", "/readyz", timeout=5)


def test_readyz_reports_redis_down_and_back(pipeline, services):
    port = free_port()
    pipeline.start_worker(listen=f"127.0.0.1:{port}")
    wait_until(lambda: readyz(port).status == 200, 15, 0.1,
               "/readyz 200 with every service up")
    services.stop_redis()
    try:
        r = wait_until(lambda: (lambda r: r if r.status == 503 else None)(
            readyz(port)), 10, 0.1, "/readyz to report Redis down")
        assert r.json["status"] == "unavailable", r.json
        assert r.json["redis"]["ok"] is False, r.json
        assert r.json["redis"]["error"], r.json
        assert r.json["postgres"] == {"ok": True}, r.json
        assert r.json["kafka"]["ok"] is True, r.json
        # Alive all along.
        assert http_request(port, "GET", "/healthz", timeout=5).status == 200
    finally:
        services.start_redis()
    r = wait_until(lambda: (lambda r: r if r.status == 200 else None)(
        readyz(port)), 15, 0.2, "/readyz to recover once Redis is back")
    assert r.json["redis"] == {"ok": True}, r.json


class NotifySocket:
    """A NOTIFY_SOCKET that records what the daemon sends, with times."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sdn")
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.got = []
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while self.running:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                self.got.append((time.monotonic(),
                                 data.decode("utf-8", "replace")))

    def watchdogs(self, since):
        with self.lock:
            return [t for t, m in self.got
                    if t >= since and "WATCHDOG=1" in m.split("\n")]

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


def test_postgres_down_watchdog_keeps_going_and_lag_shows(pipeline,
                                                          services):
    ingest = pipeline.start_ingest()
    port = free_port()
    sd = NotifySocket()
    # WATCHDOG_USEC of 1 s: a ping at least every 0.5 s.
    pipeline.env = dict(pipeline.env, NOTIFY_SOCKET=sd.path,
                        WATCHDOG_USEC="1000000")
    try:
        worker = pipeline.start_worker(listen=f"127.0.0.1:{port}",
                                       retry_backoff_max_ms=1000)
        wait_until(lambda: readyz(port).status == 200, 15, 0.1,
                   "/readyz 200 with every service up")
        services.stop_postgres()
        try:
            r = wait_until(lambda: (lambda r: r if r.status == 503 else
                                    None)(readyz(port)), 10, 0.1,
                           "/readyz to report PostgreSQL down")
            assert r.json["postgres"]["ok"] is False, r.json
            assert r.json["postgres"]["error"], r.json
            assert r.json["redis"] == {"ok": True}, r.json
            N = 5
            for i in range(N):
                cid = pipeline.cid()
                assert ingest.post(transcript(
                    cid, [(f"{cid}-e0", "user", f"hello {i}")])).status == 202
            worker.wait_log(r"not committed", timeout=20)
            # The batch retries inside batch_wait for 4 s: the loop runs
            # there, so the watchdog keeps being fed and the endpoint
            # answers.
            t0 = time.monotonic()
            slow = []
            while time.monotonic() - t0 < 4:
                h = http_request(port, "GET", "/healthz", timeout=5)
                assert h.status == 200
                if h.elapsed > 0.25:
                    slow.append(round(h.elapsed, 3))
                time.sleep(0.1)
            pings = sd.watchdogs(t0)
            gaps = [b - a for a, b in zip([t0] + pings, pings)]
            # Without the loop's timer: none at all until the commit. The
            # pace is 500-750 ms (whole-millisecond clock), so 4 s holds
            # 5-8; one late ping on a loaded box must not fail the count.
            assert len(pings) >= 4 and max(gaps) < 1.5, \
                f"{len(pings)} WATCHDOG=1 in 4 s of retries, gaps {gaps}"
            assert len(slow) <= 1, f"/healthz slow during retries: {slow}"
            s, _ = scrape(port)
            assert val(s, "sluice_worker_retries_total") >= 2
            lags = {k: v for k, v in s.items()
                    if k[0] == "sluice_worker_partition_lag"}
            assert sum(lags.values()) == N, lags
            assert val(s, "sluice_worker_batches_total") == 0
        finally:
            services.start_postgres()
        pipeline.wait_caught_up(timeout=60)
        assert pipeline.message_count() == N
        wait_until(lambda: readyz(port).status == 200, 15, 0.2,
                   "/readyz to recover once PostgreSQL is back")
        s = wait_until(lambda: (lambda s: s if val(
            s, "sluice_worker_records_total") >= N else None)(
                scrape(port)[0]), 10, 0.1, "records counted")
        assert val(s, "sluice_worker_rows_written_total",
                   kind="transcript") == N
        # The other kinds' pipelines pass over these records and commit
        # that at most once a second, and lag is reported from each
        # pipeline's 250 ms beat: zero follows within a few seconds.
        wait_until(lambda: all(v == 0 for k, v in scrape(port)[0].items()
                               if k[0] == "sluice_worker_partition_lag"),
                   10, 0.2, "partition lag back to 0 in every pipeline")
    finally:
        sd.close()


def test_readyz_reports_kafka_down_and_back(pipeline, services):
    port = free_port()
    pipeline.start_worker(listen=f"127.0.0.1:{port}")
    wait_until(lambda: readyz(port).status == 200, 15, 0.1,
               "/readyz 200 with every service up")
    services.stop_kafka()
    try:
        # librdkafka's statistics come once a second.
        r = wait_until(lambda: (lambda r: r if r.status == 503 else None)(
            readyz(port)), 15, 0.2, "/readyz to report Kafka down")
        assert r.json["kafka"]["ok"] is False, r.json
        assert "no broker up" in r.json["kafka"]["error"], r.json
        assert r.json["postgres"] == {"ok": True}, r.json
        assert r.json["redis"] == {"ok": True}, r.json
        s, _ = scrape(port)
        assert val(s, "sluice_worker_kafka_brokers_up") == 0
    finally:
        services.start_kafka()
    r = wait_until(lambda: (lambda r: r if r.status == 200 else None)(
        readyz(port)), 60, 0.5, "/readyz to recover once Kafka is back")
    assert r.json["kafka"]["ok"] is True, r.json
