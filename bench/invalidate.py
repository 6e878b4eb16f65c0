#!/usr/bin/env python3
"""sluice benchmark: cache invalidation by SCAN, generation and key index, in Redis keyspaces of growing size.

For each --keyspace size (default 200,000 and 5,000,000), Redis holds that
many cache keys of other conversations (messages:{id}:{page}:50, filled by
pipelines of 10,000 SETs a round trip), and for each --modes mode a real
sluice-ingest and sluice-worker take one transcript webhook for each of
--conversations conversations (default 50), held back so that they make one
batch. The figure is the worker's own "cache N ms" (its batch log line,
summed when the webhooks made more than one batch) from the commit to the
batch's invalidation confirmed, the median of --rounds rounds (default 5):

  scan        invalidate_keys = messages:{conversation_id}:* (the default
              kind of template): the batch's "literal*" patterns in one walk
              of the keyspace, a Lua step per SCAN step; grows with the
              keyspace. Shown for comparison.
  generation  invalidate_generation = cache_gen:conversation:{conversation_id}:
              one INCR per conversation in one pipelined round trip.
              Goal: <= 2 ms per batch, flat between sizes.
  index       invalidate_index = sluice:keys:conversation:{conversation_id}:
              SSCAN each conversation's set, then SREM + UNLINK its members,
              ten keys per conversation. Goal: <= 5 ms, flat.

Each round checks the mode's effect: scan and index leave none of the
batch's keys (and no member in the index sets), generation moves every
counter of the batch by exactly one; the other conversations' keys are
counted kept at the end. Results: bench/out/invalidate.json (its "rows" go
into bench/summary.py's table). The box is shared: figures are noisy, and
the worker reports whole milliseconds.

Usage: bench/invalidate.py [--keyspace N[,N...]] [--modes scan,generation,index]
                           [--conversations K] [--rounds R] [--services DIR]
"""
import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
import uuid

import redis

from benchlib import REPO, daemon, free_port, start_services, end_services, stop, wait_http

MODES = {
    "scan": {"invalidate_keys": "messages:{conversation_id}:*"},
    "generation": {"invalidate_keys": "",
                   "invalidate_generation": "cache_gen:conversation:{conversation_id}"},
    "index": {"invalidate_keys": "",
              "invalidate_index": "sluice:keys:conversation:{conversation_id}"},
}
GOAL_MS = {"generation": 2.0, "index": 5.0}
PAGES = 10
FILL_CHUNK = 10000


def write_conf(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def cache_ms(log):
    """(batches, their cache ms summed) from the worker's batch log lines."""
    with open(log) as f:
        ms = [int(m.group(1)) for m in
              re.finditer(r"batch of \d+ records .*?cache (\d+) ms", f.read())]
    return len(ms), sum(ms)


def filler(seed, i):
    return f"messages:{seed}-{i}:1:50"


def fill(r, seed, start, end):
    """Keys start..end-1 of other conversations, FILL_CHUNK SETs a round
    trip (a non-transaction pipeline)."""
    t0 = time.monotonic()
    for lo in range(start, end, FILL_CHUNK):
        with r.pipeline(transaction=False) as p:
            for i in range(lo, min(lo + FILL_CHUNK, end)):
                p.set(filler(seed, i), b"{}")
            p.execute()
    if end > start:
        print(f"  filled {end - start} keys in {time.monotonic() - t0:.1f} s",
              flush=True)


def count_kept(r, seed, n):
    kept = 0
    for lo in range(0, n, FILL_CHUNK):
        with r.pipeline(transaction=False) as p:
            for j in range(lo, min(lo + FILL_CHUNK, n), 1000):
                p.exists(*[filler(seed, i) for i in range(j, min(j + 1000, n))])
            kept += sum(p.execute())
    return kept


def unfill(r, seed, n):
    for lo in range(0, n, FILL_CHUNK):
        with r.pipeline(transaction=False) as p:
            for j in range(lo, min(lo + FILL_CHUNK, n), 1000):
                p.unlink(*[filler(seed, i) for i in range(j, min(j + 1000, n))])
            p.execute()


class Mode:
    """The cache a reader of this mode leaves for a batch's conversations,
    and the check that the invalidation did what the mode promises."""

    def __init__(self, name, r, cids):
        self.name, self.r, self.cids = name, r, cids
        self.keys = []

    def gen(self, c):
        return f"cache_gen:conversation:{c}"

    def index(self, c):
        return f"sluice:keys:conversation:{c}"

    def prepare(self):
        r = self.r
        with r.pipeline(transaction=False) as p:
            for c in self.cids:
                if self.name == "generation":
                    # Entries under generation 0 (no counter yet).
                    keys = [f"messages:{c}:g0:{pg}:50" for pg in range(1, PAGES + 1)]
                else:
                    keys = [f"messages:{c}:{pg}:50" for pg in range(1, PAGES + 1)]
                for k in keys:
                    p.set(k, b"{}", ex=3600)
                if self.name == "index":
                    p.sadd(self.index(c), *keys)
                    p.expire(self.index(c), 3600)
                self.keys += keys
            p.execute()

    def left(self):
        """What the invalidation has still to do: 0 once done."""
        with self.r.pipeline(transaction=False) as p:
            if self.name == "generation":
                for c in self.cids:
                    p.get(self.gen(c))
                return sum(1 for g in p.execute() if g != b"1")
            for k in self.keys:
                p.exists(k)
            if self.name == "index":
                for c in self.cids:
                    p.scard(self.index(c))
            return sum(p.execute())

    def cleanup(self):
        with self.r.pipeline(transaction=False) as p:
            for c in self.cids:
                p.unlink(self.gen(c), self.index(c))
            for i in range(0, len(self.keys), 1000):
                p.unlink(*self.keys[i:i + 1000])
            p.execute()


def post(port, cid):
    body = json.dumps({"conversation_id": cid, "event_type": "application.transcription_ready",
                       "message_type": "application", "timestamp": "2025-05-01T12:00:00Z",
                       "properties": {"transcript": [{"role": "user", "content": "hi"}]}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/webhooks/tavus", body,
                                 {"Content-Type": "application/json"})
    assert urllib.request.urlopen(req, timeout=30).status == 202


def run_mode(env, tmp, mode, size, r, k, rounds):
    name = f"{mode}-{size}"
    topic = f"bench-inv-{uuid.uuid4().hex[:8]}"
    port = free_port()
    iconf = write_conf(os.path.join(tmp, f"{name}-ingest.conf"),
                       f"listen = 127.0.0.1:{port}\ntopic = {topic}\n"
                       f"brokers = {env['SLUICE_KAFKA_BROKERS']}\n"
                       f"schema_dir = {REPO}/schemas\nlog_level = warn\n"
                       "source.tavus.kind = transcript\nsource.tavus.signature = none\n")
    settings = "".join(f"{key} = {v}\n" for key, v in MODES[mode].items())
    wconf = write_conf(os.path.join(tmp, f"{name}-worker.conf"),
                       f"brokers = {env['SLUICE_KAFKA_BROKERS']}\ntopic = {topic}\n"
                       f"group_id = g-{topic}\npostgres_dsn = {env['SLUICE_POSTGRES_DSN']}\n"
                       f"redis_url = {env['SLUICE_REDIS_URL']}\nlog_level = info\n"
                       # Lets the held-back records make one batch.
                       f"batch_wait_ms = 300\n{settings}")
    # The daemons read their settings from the files only.
    env = {key: v for key, v in env.items() if not key.startswith("SLUICE_")}
    ingest = daemon("sluice-ingest", iconf, env, os.path.join(tmp, f"{name}-ingest.log"))
    wlog = os.path.join(tmp, f"{name}-worker.log")
    worker = daemon("sluice-worker", wconf, env, wlog)
    out = []
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        # A first record: the worker has joined its group.
        post(port, f"bench-inv-{name}-warm-{uuid.uuid4().hex[:6]}")
        end = time.time() + 60
        while cache_ms(wlog)[0] == 0:
            if time.time() > end:
                raise SystemExit(f"{name}: the worker committed nothing; see {wlog}")
            time.sleep(0.2)
        for _ in range(rounds):
            run = uuid.uuid4().hex[:6]
            m = Mode(mode, r, [f"bench-inv-{run}-{i}" for i in range(k)])
            m.prepare()
            before = cache_ms(wlog)
            # Held while the webhooks go in, so that they make one batch,
            # as they do under load.
            worker.send_signal(signal.SIGSTOP)
            try:
                for c in m.cids:
                    post(port, c)
            finally:
                worker.send_signal(signal.SIGCONT)
            t0 = time.monotonic()
            end = time.time() + 600
            while (left := m.left()) > 0:
                if time.time() > end:
                    raise SystemExit(f"{name}: {left} keys or counters left; see {wlog}")
                time.sleep(0.02)
            wall = time.monotonic() - t0
            # The batch line follows the invalidation: wait for all of it.
            deadline = time.time() + 10
            while True:
                after = cache_ms(wlog)
                if after[0] > before[0] or time.time() > deadline:
                    break
                time.sleep(0.05)
            time.sleep(0.3)
            after = cache_ms(wlog)
            assert m.left() == 0, f"{name}: invalidated twice or undone"
            out.append({"cache_ms": after[1] - before[1],
                        "batches": after[0] - before[0], "wall_ms": round(wall * 1000)})
            m.cleanup()
        return out
    finally:
        stop(worker)
        stop(ingest)


def summary_rows(results, k):
    """The figures in bench/summary.py's shape: each mode against its goal
    and against SCAN in the same keyspace, and flatness between sizes."""
    by = {(x["mode"], x["keyspace"]): x["median_ms"] for x in results}
    # Flatness on the means: a median of whole milliseconds reads 1 -> 2
    # as twice the cost.
    mean = {(x["mode"], x["keyspace"]): x.get("mean_ms", x["median_ms"])
            for x in results}
    sizes = sorted({x["keyspace"] for x in results})
    rows = []
    for (mode, size), v in sorted(by.items()):
        tag = f"{size // 1000}k" if size < 1000000 else f"{size / 1e6:g}M"
        if mode in GOAL_MS:
            g = GOAL_MS[mode]
            rows.append({"figure": f"invalidate {k} conv {mode} {tag}", "value": v,
                         "unit": "ms", "baseline": "goal", "baseline_value": g,
                         # whole milliseconds: 0 ms reads as 1
                         "ratio": round(max(v, 1) / g, 2),
                         "goal": f"<= 1.0 (ms/{g:g} ms)"})
            if ("scan", size) in by:
                rows.append({"figure": f"invalidate {k} conv {mode} {tag}", "value": v,
                             "unit": "ms", "baseline": f"SCAN, {tag} keys",
                             "baseline_value": by[("scan", size)],
                             "ratio": round(by[("scan", size)] / max(v, 1), 1),
                             "goal": "(baseline/sluice)"})
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        for mode in ("scan", "generation", "index"):
            if (mode, lo) in by and (mode, hi) in by:
                rows.append({"figure": f"invalidate {mode} {hi // 1000}k keys (mean)",
                             "value": mean[(mode, hi)], "unit": "ms",
                             "baseline": f"{lo // 1000}k keys",
                             "baseline_value": mean[(mode, lo)],
                             "ratio": round(max(mean[(mode, hi)], 1) / max(mean[(mode, lo)], 1), 2),
                             "goal": "<= 1.5 (flat)" if mode in GOAL_MS else "report"})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keyspace", default="200000,5000000",
                    help="comma list of keyspace sizes (default 200000,5000000)")
    ap.add_argument("--modes", default="scan,generation,index")
    ap.add_argument("--conversations", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--services", help="running services to use (DIR with services.env)")
    a = ap.parse_args()
    sizes = sorted(int(s) for s in a.keyspace.split(","))
    modes = [m.strip() for m in a.modes.split(",")]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m} (scan, generation, index)")
    tmp = tempfile.mkdtemp(prefix="sluice-bench-inv-")
    svc, env = start_services(tmp, a.services)
    env.pop("SLUICE_TOPIC", None)
    r = redis.Redis.from_url(env["SLUICE_REDIS_URL"])
    seed = f"bench-inv-seed-{uuid.uuid4().hex[:6]}"
    filled = 0
    results = []
    try:
        for size in sizes:
            print(f"keyspace {size}:", flush=True)
            fill(r, seed, filled, size)
            filled = size
            for mode in modes:
                # The worker logs whole milliseconds: the cheap modes get
                # three times the rounds, and flatness is judged on means.
                n = a.rounds if mode == "scan" else 3 * a.rounds
                rounds = run_mode(env, tmp, mode, size, r, a.conversations, n)
                ms = [x["cache_ms"] for x in rounds]
                res = {"keyspace": size, "mode": mode, "median_ms": statistics.median(ms),
                       "mean_ms": round(statistics.mean(ms), 2),
                       "rounds": rounds, "dbsize": r.dbsize()}
                results.append(res)
                print(f"  {mode:10} cache {res['median_ms']:7.1f} ms, mean {res['mean_ms']:.2f} (median of {ms}; "
                      f"batches {[x['batches'] for x in rounds]}; resumed -> done "
                      f"{[x['wall_ms'] for x in rounds]} ms)", flush=True)
        kept = count_kept(r, seed, filled)
        assert kept == filled, f"{filled - kept} keys of other conversations removed"
        print(f"  kept all {kept} keys of other conversations")
        rows = summary_rows(results, a.conversations)
        for x in rows:
            print(f"  {x['figure']:36} {x['value']:8.1f} ms  vs {x['baseline']:14} "
                  f"{x['baseline_value']:8.1f}  ratio {x['ratio']}  goal {x['goal']}")
        out = os.path.join(REPO, "bench", "out")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "invalidate.json"), "w") as f:
            json.dump({"conversations": a.conversations, "keys_per_conversation": PAGES,
                       "sizes": sizes, "modes": modes, "results": results,
                       "rows": rows}, f, indent=2)
    finally:
        try:
            unfill(r, seed, filled)
        finally:
            end_services(tmp, svc, a.services)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
