#!/usr/bin/env python3
"""sluice benchmark: the worker's lead-context service (docs/campaigns.md).

One campaign batch of 100 messages naming 100 distinct leads goes through
the real sluice-ingest and sluice-worker; the worker reads every context
from an HTTP source (a stub in this process that answers GET /leads/{id}
after a per-lead latency, uniform 20-180 ms from a fixed seed, so every
variant sees the same latencies) with lead_context.concurrency = K, for
K = 1, 5, 10, 20, the Redis cache emptied before each. Next to each:

  ideal    the greedy sliding-window schedule of the same latencies with K
           slots (computed): what a perfect K-wide pool would take;
  chunked  the 002 seed's fix, measured for real against the same stub:
           chunks of K leads fetched concurrently (Python threads) and
           awaited together (Promise.all per chunk) before the next chunk.

sluice's figure is the lookup phase from the worker's batch log line
("N lookups (peak P in flight, T ms)"); the table also shows the time from
the POST to the run being finished in campaign_runs, and the peak number of
requests the stub saw in flight at once. Results: bench/out/contexts.json.

Usage: bench/contexts.py [--ks 1,5,10,20] [--leads 100] [--services DIR]
  --services DIR   use the services already running in DIR (services.env)
                   and leave them running; default: start private ones in a
                   temporary directory and destroy them afterwards.
"""
import argparse
import heapq
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BUILD, REPO, daemon, end_services, free_port,  # noqa: E402
                      start_services, stop, wait_http)

OUT = os.path.join(REPO, "bench", "out", "contexts.json")

SEED = 20261123
LAT_MIN, LAT_MAX = 0.020, 0.180   # seconds
RATIO_TARGET = 1.15               # sluice / ideal, at most
SPEEDUP_TARGET = 1.3              # chunked / sluice at K = 5, at least
LOOKUP_RE = re.compile(r"(\d+) lookups \(peak (\d+) in flight, (\d+) ms[,)]")


# ------------------------------------------------------------ the stub ----

class Stub:
    """GET /leads/{id}: {"lead": {"id", "name"}} after latency[id] seconds
    (404 for an id it does not know). Counts requests and the peak number in
    flight; reset() starts a new measurement."""

    def __init__(self, latency):
        self.latency = latency
        self.lock = threading.Lock()
        self.reset()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"   # keep-alive, as a real service
            timeout = 60
            # TCP_NODELAY, as real HTTP servers set: http.server writes the
            # headers and the body separately, and with Nagle the body would
            # wait for the client's delayed ACK of the headers (40 ms on
            # Linux) on every kept-alive request.
            disable_nagle_algorithm = True

            def do_GET(self):
                lead = urllib.parse.unquote(self.path.rsplit("/", 1)[-1])
                if not self.path.startswith("/leads/") or lead not in stub.latency:
                    self._send(404, b'{"error":"not_found"}')
                    return
                with stub.lock:
                    stub.inflight += 1
                    stub.peak = max(stub.peak, stub.inflight)
                    stub.requests += 1
                    stub.order.append(lead)
                time.sleep(stub.latency[lead])
                # Out of flight before the answer leaves, so a client that
                # starts its next request on the answer is never counted
                # twice.
                with stub.lock:
                    stub.inflight -= 1
                self._send(200, json.dumps(
                    {"lead": {"id": lead, "name": f"Lead {lead[-3:]}"}}).encode())

            def _send(self, code, body):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 256

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self):
        with self.lock:
            self.inflight = 0
            self.peak = 0
            self.requests = 0
            self.order = []

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------- baselines ----

def ideal_ms(lats, k):
    """Makespan of the greedy sliding window: each lookup starts the moment
    one of the K slots frees up, in the given order."""
    slots = [0.0] * k
    for lat in lats:
        heapq.heappush(slots, heapq.heappop(slots) + lat)
    return max(slots) * 1000.0


def chunked_ideal_ms(lats, k):
    return sum(max(lats[i:i + k]) for i in range(0, len(lats), k)) * 1000.0


def chunked_ms(stub, leads, k):
    """The 002 seed's fix, for real: chunks of k leads fetched at once and
    awaited together (Promise.all per chunk), one chunk after another."""
    def fetch(lead):
        with urllib.request.urlopen(f"http://127.0.0.1:{stub.port}/leads/{lead}", timeout=30) as r:
            return json.loads(r.read())
    stub.reset()
    with ThreadPoolExecutor(max_workers=k) as pool:
        t = time.perf_counter()
        for i in range(0, len(leads), k):
            list(pool.map(fetch, leads[i:i + k]))   # all of the chunk, or raise
        ms = (time.perf_counter() - t) * 1000.0
    return ms, stub.peak


# ------------------------------------------------------------- sluice ----

def post_batch(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/campaigns/bench/batches",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def batch(run_id, inbox, msgs):
    return {"run_id": run_id, "workspace_id": "bench-ws", "inbox_id": inbox,
            "end_time": "2099-01-01T00:00:00Z", "run_total": len(msgs),
            "template": "Hi {{lead.name}}, {{vars.offer}}",
            "messages": [{"message_id": m, "lead_id": lead, "vars": {"offer": "20% off"}}
                         for m, lead in msgs]}


def run_status(db, run_id):
    row = db.execute("SELECT status, processed, failed, paused, expired FROM campaign_runs"
                     " WHERE id = %s", (run_id,)).fetchone()
    return row


def wait_finished(db, run_id, timeout, poll=0.005):
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        row = run_status(db, run_id)
        if row and row[0] == "finished":
            return time.perf_counter(), row
        time.sleep(poll)
    raise SystemExit(f"run {run_id} not finished after {timeout} s: {run_status(db, run_id)}")


def bench_contexts(env, tmp, ks, n_leads):
    import psycopg
    import redis as redislib

    tag = uuid.uuid4().hex[:8]
    leads = [f"ctx-{tag}-{i:03d}" for i in range(n_leads)]   # sorted = posted order
    rng = random.Random(SEED)
    lats = [rng.uniform(LAT_MIN, LAT_MAX) for _ in leads]
    latency = dict(zip(leads, lats))
    warm_leads = [f"ctx-{tag}-warm-{k}" for k in ks]
    latency.update({w: 0.001 for w in warm_leads})
    stub = Stub(latency)

    keys = subprocess.run([os.path.join(BUILD, "sluice-worker"), "--list-keys"],
                          check=True, capture_output=True, text=True).stdout
    if "lead_context.concurrency" not in keys:
        raise SystemExit("this sluice-worker has no lead_context settings: build it first")

    topic = f"bench-ctx-{tag}"
    group = f"bench-ctx-{tag}"
    inbox = f"bench-inbox-{tag}"
    iport = free_port()
    with open(os.path.join(tmp, "ctx-ingest.conf"), "w") as f:
        f.write(f"listen = 127.0.0.1:{iport}\nbrokers = {env['SLUICE_KAFKA_BROKERS']}\n"
                f"topic = {topic}\nschema_dir = {REPO}/schemas\nlog_level = warn\n"
                "source.sched.kind = campaign\nsource.sched.signature = none\n")
    ingest = daemon("sluice-ingest", os.path.join(tmp, "ctx-ingest.conf"), env,
                    os.path.join(tmp, "ctx-ingest.log"))
    r = redislib.Redis.from_url(env["SLUICE_REDIS_URL"])
    rows = []
    try:
        wait_http(f"http://127.0.0.1:{iport}/readyz")
        with psycopg.connect(env["SLUICE_POSTGRES_DSN"], autocommit=True) as db:
            db.execute("INSERT INTO inboxes (id, workspace_id, name, connected)"
                       " VALUES (%s, 'bench-ws', 'bench', true) ON CONFLICT (id) DO NOTHING",
                       (inbox,))
            for k, warm in zip(ks, warm_leads):
                rows.append(one_k(env, tmp, db, r, stub, iport, topic, group, inbox,
                                  leads, lats, warm, k))
    finally:
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(timeout=60)
        stub.close()

    print(f"contexts: {n_leads} distinct leads, HTTP source latency uniform "
          f"{LAT_MIN * 1000:.0f}-{LAT_MAX * 1000:.0f} ms (seed {SEED}, sum {sum(lats) * 1000:.0f} ms),"
          " cache empty")
    print("   K  sluice ms  ideal ms  sluice/ideal  chunked ms  chunked/sluice"
          "  peak (sluice/stub)  POST->finished ms")
    for row in rows:
        print(f"  {row['k']:2d}  {row['sluice_ms']:9.0f}  {row['ideal_ms']:8.0f}  {row['ratio']:12.2f}"
              f"  {row['chunked_ms']:10.0f}  {row['speedup']:14.2f}"
              f"  {row['peak_sluice']:8d} / {row['peak_stub']:<7d}  {row['post_to_finished_ms']:17.0f}")
    for row in rows:
        if row["lookups"] != n_leads or row["stub_requests"] != n_leads:
            print(f"  K={row['k']}: {row['lookups']} lookups, {row['stub_requests']} requests"
                  f" at the stub (expected {n_leads} each)")
        if row["ready"] != n_leads:
            print(f"  K={row['k']}: {row['ready']} of {n_leads} messages ready")
    worst = max(row["ratio"] for row in rows)
    print(f"contexts: sluice/ideal at most {worst:.2f} (target <= {RATIO_TARGET})")
    k5 = [row for row in rows if row["k"] == 5]
    if k5:
        print(f"contexts: chunked/sluice at K=5 {k5[0]['speedup']:.2f} (target >= {SPEEDUP_TARGET})")
    bad = [row["k"] for row in rows if row["peak_sluice"] != row["k"] or row["peak_stub"] != row["k"]]
    print("contexts: peak in flight equals K: " + ("yes" if not bad else f"NO for K={bad}"))

    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"leads": n_leads, "seed": SEED,
                   "latency_ms": {"min": LAT_MIN * 1000, "max": LAT_MAX * 1000,
                                  "sum": sum(lats) * 1000},
                   "targets": {"ratio_max": RATIO_TARGET, "speedup_at_k5_min": SPEEDUP_TARGET},
                   "results": rows}, f, indent=2)
        f.write("\n")
    print(f"contexts: wrote {os.path.relpath(OUT, REPO)}")


def one_k(env, tmp, db, r, stub, iport, topic, group, inbox, leads, lats, warm, k):
    """Start a worker with concurrency K, warm it up, then time one batch."""
    conf = os.path.join(tmp, f"ctx-worker-{k}.conf")
    with open(conf, "w") as f:
        f.write(f"brokers = {env['SLUICE_KAFKA_BROKERS']}\ntopic = {topic}\ngroup_id = {group}\n"
                f"postgres_dsn = {env['SLUICE_POSTGRES_DSN']}\nredis_url = {env['SLUICE_REDIS_URL']}\n"
                "log_level = info\n"
                "lead_context.source = http\n"
                f"lead_context.url = http://127.0.0.1:{stub.port}/leads/{{lead_id}}\n"
                f"lead_context.concurrency = {k}\n")
    log = os.path.join(tmp, f"ctx-worker-{k}.log")
    worker = daemon("sluice-worker", conf, env, log)
    tag = leads[0].rsplit("-", 1)[0]
    try:
        # Warm-up: one message, so the worker owns the partitions and has
        # its connections before the clock starts.
        code, body = post_batch(iport, batch(f"{tag}-warm-{k}", inbox, [(f"{tag}-warm-m-{k}", warm)]))
        if code != 202:
            raise SystemExit(f"warm-up batch refused: HTTP {code} {body[:300]!r}")
        wait_finished(db, f"{tag}-warm-{k}", 120, poll=0.05)

        # Nothing of these leads in Redis: every one is a miss.
        r.delete(*[f"{p}:{lead}" for lead in leads
                   for p in ("lead_ctx", "lead_ctx_lock", "lead_ctx_ver")])
        stub.reset()
        mark = os.path.getsize(log)
        run_id = f"{tag}-k{k}"
        body = batch(run_id, inbox, [(f"{tag}-k{k}-m{i:03d}", lead) for i, lead in enumerate(leads)])
        t0 = time.perf_counter()
        code, reply = post_batch(iport, body)
        if code != 202:
            raise SystemExit(f"batch refused: HTTP {code} {reply[:300]!r}")
        t1, status = wait_finished(db, run_id, 120)
        peak_stub, requests, order = stub.peak, stub.requests, list(stub.order)

        line = None
        end = time.time() + 10
        while line is None and time.time() < end:
            with open(log) as f:
                f.seek(mark)
                for ln in f:
                    if "batch of" in ln and LOOKUP_RE.search(ln):
                        line = ln.strip()
            if line is None:
                time.sleep(0.05)
        if line is None:
            raise SystemExit(f"K={k}: no batch log line with lookups in {log}")
        m = LOOKUP_RE.search(line)
    finally:
        stop(worker)

    sluice = float(m.group(3))
    ideal = ideal_ms(lats, k)
    order_lats = [dict(zip(leads, lats))[lead] for lead in order if lead in leads]
    chunk_ms, chunk_peak = chunked_ms(stub, leads, k)
    return {"k": k, "sluice_ms": sluice, "ideal_ms": round(ideal, 1),
            "ratio": round(sluice / ideal, 3),
            "ideal_in_request_order_ms": round(ideal_ms(order_lats, k), 1) if order_lats else None,
            "chunked_ms": round(chunk_ms, 1), "chunked_ideal_ms": round(chunked_ideal_ms(lats, k), 1),
            "chunked_peak": chunk_peak,
            "speedup": round(chunk_ms / sluice, 3),
            "lookups": int(m.group(1)), "peak_sluice": int(m.group(2)), "peak_stub": peak_stub,
            "stub_requests": requests,
            "post_to_finished_ms": round((t1 - t0) * 1000.0, 1),
            "ready": status[1], "failed": status[2],
            "log_line": line}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ks", default="1,5,10,20")
    ap.add_argument("--leads", type=int, default=100)
    ap.add_argument("--services", help="running services to use (DIR with services.env)")
    a = ap.parse_args()
    ks = [int(k) for k in a.ks.split(",")]
    tmp = tempfile.mkdtemp(prefix="sluice-bench-ctx-")
    svc, env = start_services(tmp, a.services)
    env.pop("SLUICE_TOPIC", None)   # the configs name their own topic
    try:
        bench_contexts(env, tmp, ks, a.leads)
    finally:
        end_services(tmp, svc, a.services)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
