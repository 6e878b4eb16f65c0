#!/usr/bin/env python3
"""sluice benchmark: cache invalidation in a large Redis keyspace.

Redis holds --keyspace cache keys of other conversations (default 200,000,
messages:{id}:{page}:50) besides ten pages of each of the --conversations
conversations a batch touches (default 50). One transcript webhook per
conversation goes through the real sluice-ingest and sluice-worker, and
the figure is the worker's own "cache N ms" (its batch log line, summed
over the batches) from the commit to every key of the batch gone:

  sluice     the "literal*" patterns of a batch in one walk of the keyspace
             (a Lua step per SCAN step that UNLINKs the keys starting with
             one of the prefixes);
  baseline   the same worker as a Redis user that may not run scripts: it
             falls back to a SCAN MATCH per pattern, i.e. one walk of the
             keyspace per conversation.

Each variant's every cached key of the batch is checked gone, and the keys
of the other conversations checked kept. Results: bench/out/invalidate.json.

Usage: bench/invalidate.py [--keyspace N] [--conversations K] [--services DIR]
"""
import argparse
import json
import os
import re
import signal
import sys
import tempfile
import time
import uuid

import redis

from benchlib import REPO, daemon, free_port, start_services, end_services, stop, wait_http


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


def run_variant(env, tmp, name, redis_url, r, k):
    topic = f"bench-inv-{uuid.uuid4().hex[:8]}"
    port = free_port()
    iconf = write_conf(os.path.join(tmp, f"{name}-ingest.conf"),
                       f"listen = 127.0.0.1:{port}\ntopic = {topic}\n"
                       f"brokers = {env['SLUICE_KAFKA_BROKERS']}\n"
                       f"schema_dir = {REPO}/schemas\nlog_level = warn\n"
                       "source.tavus.kind = transcript\nsource.tavus.signature = none\n")
    wconf = write_conf(os.path.join(tmp, f"{name}-worker.conf"),
                       f"brokers = {env['SLUICE_KAFKA_BROKERS']}\ntopic = {topic}\n"
                       f"group_id = g-{topic}\npostgres_dsn = {env['SLUICE_POSTGRES_DSN']}\n"
                       f"redis_url = {redis_url}\nlog_level = info\n")
    # The daemons read their settings from the files only: an environment
    # variable (SLUICE_REDIS_URL) would override the variant's redis_url.
    env = {k: v for k, v in env.items() if not k.startswith("SLUICE_")}
    ingest = daemon("sluice-ingest", iconf, env, os.path.join(tmp, f"{name}-ingest.log"))
    wlog = os.path.join(tmp, f"{name}-worker.log")
    worker = daemon("sluice-worker", wconf, env, wlog)
    import urllib.request

    def post(cid):
        body = json.dumps({"conversation_id": cid, "event_type": "application.transcription_ready",
                           "message_type": "application", "timestamp": "2025-05-01T12:00:00Z",
                           "properties": {"transcript": [{"role": "user", "content": "hi"}]}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/webhooks/tavus", body,
                                     {"Content-Type": "application/json"})
        assert urllib.request.urlopen(req, timeout=30).status == 202

    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
        # A first record: the worker has joined, and a worker that may not
        # run scripts has found out (its first invalidation is refused).
        post(f"bench-inv-{name}-warm-{uuid.uuid4().hex[:6]}")
        end = time.time() + 60
        while cache_ms(wlog)[0] == 0:
            if time.time() > end:
                raise SystemExit(f"{name}: the worker committed nothing; see {wlog}")
            time.sleep(0.2)
        time.sleep(1.5)     # a refused invalidation is retried after its back-off
        before = cache_ms(wlog)
        run = uuid.uuid4().hex[:6]
        cids = [f"bench-inv-{run}-{i}" for i in range(k)]
        mine = [f"messages:{c}:{p}:50" for c in cids for p in range(1, 11)]
        with r.pipeline(transaction=False) as p:
            for key in mine:
                p.set(key, b"{}")
            p.execute()
        # Held while the webhooks go in, so that they make one batch, as
        # they do under load (at 2,000 events/s a batch spans many
        # conversations).
        worker.send_signal(signal.SIGSTOP)
        try:
            for c in cids:
                post(c)
        finally:
            worker.send_signal(signal.SIGCONT)
        t0 = time.monotonic()
        end = time.time() + 300
        while True:
            with r.pipeline(transaction=False) as p:
                for key in mine:
                    p.exists(key)
                left = sum(p.execute())
            if not left:
                break
            if time.time() > end:
                raise SystemExit(f"{name}: {left} keys still cached; see {wlog}")
            time.sleep(0.05)
        wall = time.monotonic() - t0
        time.sleep(0.5)     # the batch log line follows the last UNLINK
        after = cache_ms(wlog)
        return after[1] - before[1], wall, after[0] - before[0]
    finally:
        stop(worker)
        stop(ingest)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keyspace", type=int, default=200000)
    ap.add_argument("--conversations", type=int, default=50)
    ap.add_argument("--services", help="running services to use (DIR with services.env)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sluice-bench-inv-")
    svc, env = start_services(tmp, a.services)
    env.pop("SLUICE_TOPIC", None)
    r = redis.Redis.from_url(env["SLUICE_REDIS_URL"])
    user = f"bench-noscript-{uuid.uuid4().hex[:6]}"
    seed = f"bench-inv-seed-{uuid.uuid4().hex[:6]}"
    try:
        with r.pipeline(transaction=False) as p:
            for i in range(a.keyspace):
                p.set(f"messages:{seed}-{i}:1:50", b"{}")
                if i % 10000 == 9999:
                    p.execute()
            p.execute()
        r.acl_setuser(user, enabled=True, passwords=["+bench-pw"], keys=["*"],
                      channels=["*"], commands=["+@all", "-@scripting"])
        base = env["SLUICE_REDIS_URL"]
        rows = {}
        for name, url in (("sluice", base),
                          ("baseline", base.replace("redis://", f"redis://{user}:bench-pw@"))):
            rows[name] = run_variant(env, tmp, name, url, r, a.conversations)
        kept = sum(1 for _ in r.scan_iter(f"messages:{seed}-*", count=10000))
        assert kept == a.keyspace, f"{a.keyspace - kept} keys of other conversations removed"
        s, b = rows["sluice"], rows["baseline"]
        print(f"invalidation: {a.conversations} conversations in a keyspace of "
              f"{r.dbsize()} keys")
        print(f"  sluice   (one walk, script)     cache {s[0]:6d} ms  commit of the batch -> keys gone {s[1] * 1000:7.0f} ms  ({s[2]} batches)")
        print(f"  baseline (SCAN per pattern)     cache {b[0]:6d} ms  commit of the batch -> keys gone {b[1] * 1000:7.0f} ms  ({b[2]} batches)")
        print(f"  ratio baseline / sluice: {b[0] / max(s[0], 1):.1f}x (cache time)")
        out = os.path.join(REPO, "bench", "out")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "invalidate.json"), "w") as f:
            json.dump({"keyspace": a.keyspace, "conversations": a.conversations,
                       "sluice_cache_ms": s[0], "sluice_wall_s": s[1],
                       "baseline_cache_ms": b[0], "baseline_wall_s": b[1]}, f, indent=2)
    finally:
        try:
            r.acl_deluser(user)
            for k in r.scan_iter(f"messages:{seed}-*", count=10000):
                r.unlink(k)
        finally:
            end_services(tmp, svc, a.services)


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
