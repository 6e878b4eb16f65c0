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

    bench/callgrind_requests.py --stages INGEST EVHTTP202 [-n N]

splits sluice-ingest's instructions per webhook into its stages (the
HTTP parsing libevent does for both, the checks, the JSON parse, the
schema, the publish, the delivery report and the answer) next to the bare
evhttp ceiling (bench/evhttp202, run as `evhttp202 PORT`): the profile
that shows where the gap between the two goes.
"""

import argparse
import http.client
import json
import os
import re
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
            if c.getresponse().status in (200, 202):   # evhttp202: 202
                return
        except OSError:
            pass
        time.sleep(0.3)
    sys.exit("the daemon did not answer /healthz under callgrind")


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


# sluice-ingest's stages: (label, the function whose inclusive count it
# is). Indented ones are inside the one above them.
STAGES = (
    ("request read to record queued", "gate_publish"),
    ("  JSON parse (cJSON)", "json_parse_whole"),
    ("  the kind's step", "step_publish"),
    ("    schema (schemas/*.json)", "schema_validate"),
    ("    the kind's own checks", "transcript_check"),
    ("    record to librdkafka", "publish_record"),
    ("delivery report to the answer", "handle_wake"),
    ("  the 202 (evhttp_send_reply)", "evhttp_send_reply"),
)


def inclusive(dump):
    """function name -> inclusive instructions, from callgrind_annotate."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes",
                          "--threshold=100", dump],
                         capture_output=True, text=True, check=True).stdout
    counts = {}
    # "58,439,661 ( 0.00%)  /path/http.c:handle_request [/path/bin]"
    for m in re.finditer(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*?:([\w]+)",
                         out, re.M):
        n = int(m.group(1).replace(",", ""))
        counts[m.group(2)] = max(counts.get(m.group(2), 0), n)
    return counts


def measure(binary, n, brokers, kind, stages=None):
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
    argv = ([binary, str(port)] if os.path.basename(binary) == "evhttp202"
            else [binary, "-c", cfg])
    proc = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no",
         "--separate-threads=yes",
         f"--callgrind-out-file={tmp}/cg.{tag}"] + argv,
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
        if stages is not None:
            stages.update(inclusive(os.path.join(tmp, f"cg.{tag}.1-01")))
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
    ap.add_argument("--json", help="with --stages: write the figures here")
    ap.add_argument("--stages", action="store_true",
                    help="BINARIES are sluice-ingest and evhttp202: split "
                         "the webhook's instructions into stages")
    a = ap.parse_args()
    if a.stages:
        return print_stages(a)
    kinds = ["healthz", "webhook"] if a.kind == "both" else [a.kind]
    print(f"{'binary':40} {'requests':>10} {'instructions/request':>22}")
    for kind in kinds:
        for b in a.binaries:
            ir = measure(b, a.n, a.brokers, kind)
            print(f"{b[-40:]:40} {kind + ' ' + str(a.n):>10} "
                  f"{ir / a.n:22.0f}")


def print_stages(a):
    if len(a.binaries) != 2:
        sys.exit("--stages takes INGEST EVHTTP202")
    counts, ccounts = {}, {}
    ingest = measure(a.binaries[0], a.n, a.brokers, "webhook", counts)
    ceiling = measure(a.binaries[1], a.n, a.brokers, "webhook", ccounts)
    per = {k: v / a.n for k, v in counts.items()}
    c_reply = ccounts.get("evhttp_send_reply", 0) / a.n
    print("instructions per webhook on the event loop thread (callgrind, "
          f"{a.n} keep-alive POSTs of a transcript)")
    print(f"  {'bare evhttp static 202 (the ceiling)':44} {ceiling / a.n:10.0f}")
    print(f"  {'  its 202 (evhttp_send_reply)':44} {c_reply:10.0f}")
    print(f"  {'  the rest: HTTP parsing, the loop':44} {ceiling / a.n - c_reply:10.0f}")
    print(f"  {'sluice-ingest':44} {ingest / a.n:10.0f}"
          f"   (the ceiling's {ceiling / ingest:.2f})")
    for label, fn in STAGES:
        print(f"  {label:44} {per.get(fn, 0):10.0f}")
    rest = ingest / a.n - per.get("gate_publish", 0) - per.get("handle_wake", 0)
    print(f"  {'the rest: HTTP parsing, routing, the loop':44} {rest:10.0f}")
    print("  (kernel time is not counted: read, write and epoll cost both alike)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"n": a.n, "ceiling": ceiling / a.n,
                       "ceiling_reply": c_reply,
                       "ingest": ingest / a.n,
                       "stages": {label.strip(): per.get(fn, 0)
                                  for label, fn in STAGES},
                       "rest": rest}, f, indent=1)


if __name__ == "__main__":
    main()
