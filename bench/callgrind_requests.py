#!/usr/bin/env python3
"""Instructions per request of sluice-ingest's event loop, counted by
callgrind: deterministic where a wall-clock bench on a shared box is noise.

    bench/callgrind_requests.py BINARY [BINARY ...] [-n N] [--brokers B]

For each binary: run it under callgrind (instrumentation off), send warm-up
requests, switch instrumentation on and zero the counts, send N keep-alive requests on one
connection (GET /healthz, then POST webhooks that go to Kafka), switch it
off, and read the main thread's instruction count. Kafka's own threads are
left out (--separate-threads), so only the loop's work per request is
counted. Two binaries built before and after a change compare that
change's cost per request.
"""

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port, proc, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"the daemon exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    sys.exit("sluice-ingest did not answer /healthz under callgrind")


def requests(port, n, kind):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for i in range(n):
        if kind == "healthz":
            c.request("GET", "/healthz")
        else:
            body = json.dumps({
                "conversation_id": f"cg-{i % 50}",
                "event_type": "application.transcription_ready",
                "properties": {"transcript": [
                    {"role": "user", "content": "hello there " * 4}]}})
            c.request("POST", "/v1/webhooks/tavus", body,
                      {"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        if r.status not in (200, 202):
            sys.exit(f"{kind}: answer {r.status}")
    c.close()


def control(pid, arg):
    subprocess.run(["callgrind_control", arg, str(pid)], check=True,
                   capture_output=True)


def main_thread_ir(outdir, tag):
    # cg.<tag>.1-01: the first dump, thread 1 (the loop) with
    # --separate-threads; its "totals:" line counts from the zeroing.
    for line in open(os.path.join(outdir, f"cg.{tag}.1-01")):
        if line.startswith("totals:"):
            return int(line.split()[1])
    sys.exit("no totals in the callgrind dump")


def measure(binary, n, brokers, kind):
    tmp = tempfile.mkdtemp(prefix="cg-")
    port = free_port()
    cfg = os.path.join(tmp, "ingest.conf")
    with open(cfg, "w") as f:
        f.write(f"listen = 127.0.0.1:{port}\nbrokers = {brokers}\n"
                f"topic = cg-{uuid.uuid4().hex[:8]}\n"
                f"schema_dir = {ROOT}/schemas\nlog_level = warn\n"
                "source.tavus.kind = transcript\n"
                "source.tavus.signature = none\n")
    tag = "run"
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no",
         "--separate-threads=yes",
         f"--callgrind-out-file={tmp}/cg.{tag}", binary, "-c", cfg],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "log"), "w"))
    try:
        wait_healthy(port, proc)
        requests(port, 200, kind)             # warm-up, not counted
        control(proc.pid, "--instr=on")
        control(proc.pid, "--zero")
        requests(port, n, kind)
        control(proc.pid, "--instr=off")
        control(proc.pid, "--dump")
        time.sleep(1.0)
        ir = main_thread_ir(tmp, tag)
    finally:
        proc.terminate()
        proc.wait(60)
    return ir


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("--brokers",
                    default=os.environ.get("SLUICE_KAFKA_BROKERS",
                                           "127.0.0.1:9092"))
    ap.add_argument("--kind", choices=["healthz", "webhook", "both"],
                    default="both")
    a = ap.parse_args()
    kinds = ["healthz", "webhook"] if a.kind == "both" else [a.kind]
    print(f"{'binary':40} {'requests':>10} {'instructions/request':>22}")
    for kind in kinds:
        for b in a.binaries:
            ir = measure(b, a.n, a.brokers, kind)
            print(f"{b[-40:]:40} {kind + ' ' + str(a.n):>10} "
                  f"{ir / a.n:22.0f}")


if __name__ == "__main__":
    main()
