#!/usr/bin/env python3
"""sluice benchmark: one kind stuck, the others unaffected.

Real sluice-ingest and sluice-worker (HTTP lead source: a stub in this
process). Two probes run side by side the whole time, each one request
after the other over keep-alive HTTP:

  transcript  a one-entry transcript, timed from its 202 to its row in
              PostgreSQL (polled every millisecond on a connection of its
              own);
  chat        a WhatsApp text message, timed from its 202 to the NOTIFY
              sluice_turns of its turn (a LISTEN connection of its own).

They are measured in phases of SECONDS each, in one run:

  unloaded    nothing else happens (the baseline);
  hung        a campaign batch of 50 leads whose source never answers
              (lookups time out after 60 s): the campaign pipeline waits;
  model       campaign batches of 100 leads whose source answers in 1 s,
              K=5, one after the other: the campaign pipeline is busy
              the whole phase, as model composition keeps it;
  shared      10 hung leads against a worker with pipelines = shared
              (every kind in one pipeline, as before kinds had pipelines
              of their own; lookups time out after 5 s, K=5: the batch
              takes 10 s), for contrast.

Printed: p50 and p99 of each probe per phase and the p99 next to the
unloaded one as a ratio (the goal: at most 1.5x). Results:
bench/out/stuck.json.

Usage: bench/stuck.py [--seconds 10] [--services DIR]
"""
import argparse
import http.client
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (REPO, daemon, end_services, free_port,  # noqa: E402
                      start_services, stop, wait_http)
from contexts import Stub  # noqa: E402

OUT = os.path.join(REPO, "bench", "out", "stuck.json")
BUSINESS = "15550007777"


class Latency:
    """bench/contexts.py's Stub answers a lead after latency[lead] seconds;
    here every lead is known: one whose id starts with "hung-" sleeps
    `hang` seconds, any other `delay`."""

    def __init__(self):
        self.delay, self.hang = 0.0, 600.0

    def __contains__(self, lead):
        return True

    def __getitem__(self, lead):
        return self.hang if lead.startswith("hung-") else self.delay


def pct(xs, p):
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)] if xs else float("nan")


class Poster:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, path, body):
        self.conn.request("POST", path, body=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        r.read()
        if r.status != 202:
            raise SystemExit(f"stuck: {path} answered {r.status}")


def transcript_probe(port, dsn, stop_ev, out):
    import psycopg
    poster = Poster(port)
    with psycopg.connect(dsn, autocommit=True) as db:
        while not stop_ev.is_set():
            cid = f"stuck-{uuid.uuid4().hex[:12]}"
            poster.post("/v1/webhooks/tavus", {
                "event_type": "application.transcription_ready",
                "conversation_id": cid,
                "properties": {"transcript": [{"role": "user", "content": "hi"}]}})
            t0 = time.perf_counter()
            while db.execute("SELECT count(*) FROM messages WHERE conversation_id = %s",
                             (cid,)).fetchone()[0] == 0:
                time.sleep(0.001)
            out.append(time.perf_counter() - t0)


def chat_probe(port, dsn, stop_ev, out):
    import psycopg
    poster = Poster(port)
    with psycopg.connect(dsn, autocommit=True) as listen:
        listen.execute("LISTEN sluice_turns")
        n = 0
        while not stop_ev.is_set():
            n += 1
            sender = f"1555{random.randrange(10**7):07d}"
            mid = f"wamid.stuck{uuid.uuid4().hex}"
            poster.post("/v1/webhooks/wa", {
                "object": "whatsapp_business_account",
                "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                    "messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": BUSINESS,
                                 "phone_number_id": "900000000000002"},
                    "contacts": [{"profile": {"name": "P"}, "wa_id": sender}],
                    "messages": [{"from": sender, "id": mid,
                                  "timestamp": str(int(time.time())),
                                  "type": "text", "text": {"body": "hi"}}]}}]}]})
            t0 = time.perf_counter()
            want = f"{BUSINESS}:{sender}"
            got = False
            while not got:
                for note in listen.notifies(timeout=60, stop_after=1):
                    got = note.payload == want
                if not got and time.perf_counter() - t0 > 120:
                    raise SystemExit("stuck: no NOTIFY within 120 s")
            out.append(time.perf_counter() - t0)


def campaign(port, leads, tag):
    run = f"stuck-run-{tag}-{uuid.uuid4().hex[:8]}"
    Poster(port).post("/v1/campaigns/bench/batches", {
        "run_id": run, "workspace_id": "bench-ws", "inbox_id": "stuck-inbox",
        "end_time": "2099-01-01T00:00:00Z", "run_total": len(leads),
        "template": "Hi {{lead.name}}",
        "messages": [{"message_id": f"{run}-{i}", "lead_id": lead}
                     for i, lead in enumerate(leads)]})
    return run


def phase(name, iport, dsn, seconds, load=None):
    t, c, stop_ev = [], [], threading.Event()
    threads = [threading.Thread(target=transcript_probe, args=(iport, dsn, stop_ev, t)),
               threading.Thread(target=chat_probe, args=(iport, dsn, stop_ev, c))]
    for th in threads:
        th.start()
    end = time.time() + seconds
    while time.time() < end:
        if load:
            load()
        time.sleep(0.05)
    stop_ev.set()
    for th in threads:
        th.join()
    r = {"transcript": {"n": len(t), "p50_ms": pct(t, 50) * 1000, "p99_ms": pct(t, 99) * 1000},
         "chat": {"n": len(c), "p50_ms": pct(c, 50) * 1000, "p99_ms": pct(c, 99) * 1000}}
    print(f"  {name:9s} transcript 202->row p50 {r['transcript']['p50_ms']:7.1f} ms "
          f"p99 {r['transcript']['p99_ms']:8.1f} ms (n={len(t)}); chat 202->NOTIFY "
          f"p50 {r['chat']['p50_ms']:7.1f} ms p99 {r['chat']['p99_ms']:8.1f} ms (n={len(c)})",
          flush=True)
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--services", help="running services to use (DIR with services.env)")
    a = ap.parse_args()
    import psycopg

    print(f"stuck: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before the run")
    tmp = tempfile.mkdtemp(prefix="sluice-bench-stuck-")
    svc, env = start_services(tmp, a.services)
    env.pop("SLUICE_TOPIC", None)
    dsn = env["SLUICE_POSTGRES_DSN"]
    lat = Latency()
    stub = Stub(lat)
    tag = f"{uuid.uuid4().int % 10**6:06d}"
    procs, results = [], {}
    try:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute("INSERT INTO inboxes (id, workspace_id, connected) VALUES"
                       " ('stuck-inbox', 'bench-ws', true) ON CONFLICT DO NOTHING")

        def start(pipelines, timeout_ms, topic):
            iport = free_port()
            iconf = os.path.join(tmp, f"ingest-{topic}.conf")
            with open(iconf, "w") as f:
                f.write(f"listen = 127.0.0.1:{iport}\nbrokers = {env['SLUICE_KAFKA_BROKERS']}\n"
                        f"topic = {topic}\nschema_dir = {REPO}/schemas\nlog_level = warn\n"
                        "source.tavus.kind = transcript\nsource.tavus.signature = none\n"
                        "source.wa.kind = chat\nsource.wa.signature = none\n"
                        "source.camp.kind = campaign\nsource.camp.signature = none\n")
            wconf = os.path.join(tmp, f"worker-{topic}.conf")
            with open(wconf, "w") as f:
                f.write(f"brokers = {env['SLUICE_KAFKA_BROKERS']}\ntopic = {topic}\n"
                        f"group_id = {topic}\npostgres_dsn = {dsn}\n"
                        f"redis_url = {env['SLUICE_REDIS_URL']}\nlog_level = info\n"
                        f"pipelines = {pipelines}\nlead_context.source = http\n"
                        f"lead_context.url = http://127.0.0.1:{stub.port}/leads/{{lead_id}}\n"
                        f"lead_context.timeout_ms = {timeout_ms}\nlead_context.retries = 0\n"
                        "lead_context.concurrency = 5\n")
            w = daemon("sluice-worker", wconf, env, os.path.join(tmp, f"worker-{topic}.log"))
            i = daemon("sluice-ingest", iconf, env, os.path.join(tmp, f"ingest-{topic}.log"))
            procs.extend([w, i])
            wait_http(f"http://127.0.0.1:{iport}/readyz")
            return iport, w, i

        iport, w, i = start("per_kind", 60000, f"bench-stuck-{tag}")
        print("per-kind pipelines (the default):")
        phase("warm-up", iport, dsn, 5)
        results["unloaded"] = phase("unloaded", iport, dsn, a.seconds)
        campaign(iport, [f"hung-{tag}-{n}" for n in range(50)], "hung")
        time.sleep(0.5)
        results["hung"] = phase("hung", iport, dsn, a.seconds)
        lat.hang = 0        # what still sleeps ends with its timeout
        lat.delay = 1.0
        state = {"next": 0.0}

        def model_load():
            # A batch of 100 leads at 1 s each, K=5: about 20 s of work;
            # a new one every 10 s keeps the pipeline busy throughout.
            if time.time() >= state["next"]:
                campaign(iport, [f"m-{tag}-{uuid.uuid4().hex[:8]}" for _ in range(100)],
                         "model")
                state["next"] = time.time() + 10
        results["model"] = phase("model", iport, dsn, a.seconds, model_load)
        for p in (i, w):
            stop(p, timeout=120)
        lat.delay, lat.hang = 0.0, 600.0

        iport, w, i = start("shared", 5000, f"bench-stuck-shared-{tag}")
        print("one shared pipeline (pipelines = shared), for contrast:")
        phase("warm-up", iport, dsn, 3)
        campaign(iport, [f"hung-{tag}-s{n}" for n in range(10)], "shared")
        time.sleep(0.5)
        results["shared_hung"] = phase("shared", iport, dsn, a.seconds)
        lat.hang = 0
    finally:
        for p in procs:
            if p.poll() is None:
                stop(p, timeout=120)
        stub.close()
        end_services(tmp, svc, a.services)

    base = results["unloaded"]
    print("\np99 next to the unloaded p99 of the same run (goal: at most 1.5x):")
    for ph in ("hung", "model", "shared_hung"):
        for k in ("transcript", "chat"):
            ratio = results[ph][k]["p99_ms"] / base[k]["p99_ms"]
            results[ph][k]["p99_vs_unloaded"] = ratio
            print(f"  {ph:12s} {k:10s} {results[ph][k]['p99_ms']:8.1f} ms vs "
                  f"{base[k]['p99_ms']:6.1f} ms = {ratio:6.2f}x")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    print(f"stuck: wrote {os.path.relpath(OUT, REPO)}")


if __name__ == "__main__":
    main()
