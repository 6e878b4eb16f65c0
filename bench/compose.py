#!/usr/bin/env python3
"""sluice benchmark: campaign messages composed by a model (docs/campaigns.md).

One campaign batch of 200 messages with a `prompt` (composed by the model,
not rendered from a template) goes through the real sluice-ingest and
sluice-worker. The model is tests/system/llmstub.py in this process: an
OpenAI-compatible POST /v1/chat/completions whose every request is checked
against the official `openai` package's request type and every answer
parsed with its ChatCompletion type; its latency is lognormal (median
800 ms, p95 2.5 s) drawn in call-arrival order from a fixed seed, the
sequence started again for every run, so every variant sees the same
latencies. Lead contexts come from an HTTP source (tests/system/leadstub.py,
10 ms a lookup, lead_context.concurrency = 5), fresh leads for every run.
For composer.concurrency K = 5, 10, 20, next to sluice:

  ideal       the greedy sliding-window schedule of the latencies the model
              drew for sluice's calls, in their arrival order, K at a time
              (computed): what a perfect K-wide pool would take;
  chunks of 5 the old system, measured against the same model in the same
              run: a thread pool sends 5 calls, waits for all 5, sends the
              next 5 (Promise.all per chunk); compared with sluice at K = 5;
  two stages  lookups then composition, measured: a driver fetches all 200
              lead contexts from the same source (5 at a time), then
              composes K at a time in a sliding window; compared with
              sluice's first lookup to last answer (the overlap's gain).

sluice's figure is the wall time from its first model call to its last
answer (the model's view); the table also shows the POST to every message
`ready`. Then the 429 regime: the model allows 8 calls/s (a token bucket of
8) and answers 429 beyond, once without Retry-After and once with it,
K = 20: the calls/s it accepted from sluice (from the first call to the
last accepted one) next to 8, and the share of calls answered 429 (goals:
>= 0.9 and <= 5 %).

When the sluice-worker built has no composer (no composer.base_url among
its keys) the baselines alone are measured against the model.
Results: bench/out/compose.json.

Usage: bench/compose.py [--ks 5,10,20] [--messages 200] [--rate 8]
                        [--baselines-only] [--services DIR]
  --services DIR   use the services already running in DIR (services.env)
                   and leave them running; default: start private ones in a
                   temporary directory and destroy them afterwards.
"""
import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BUILD, REPO, daemon, end_services, free_port,  # noqa: E402
                      start_services, stop, wait_http)
from contexts import chunked_ideal_ms, ideal_ms, post_batch  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "tests", "system"))
from leadstub import LeadStub  # noqa: E402
from llmstub import LLMStub  # noqa: E402

OUT = os.path.join(REPO, "bench", "out", "compose.json")

SEED = 20261124
MEDIAN, P95 = 0.800, 2.500        # seconds, the model's latency
LOOKUP_S = 0.010                  # the lead source's latency
LOOKUP_K = 5                      # lead_context.concurrency (its default)
OLD_CHUNK = 5                     # the old system's chunks
KEY = "sk-bench-compose-0000"
MODEL = "openai/gpt-4o-mini"
MODEL_REPORTED = "openai/gpt-4o-mini-2024-07-18"
SYSTEM = "You write one short, friendly outreach message. Plain text only."
USER = "Write to {{lead.name}} about {{vars.offer}}. Keep it under 60 words."
MAX_TOKENS, TEMPERATURE = 200, 0.7

RATIO_TARGET = 1.10               # sluice / ideal, at most
SPEEDUP_TARGET = 1.5              # chunks of 5 / sluice at K = 5, at least
RATE_TARGET = 0.90                # accepted calls/s / R, at least
SHARE_429_TARGET = 0.05           # 429s / calls, at most
COMPOSED_RE = re.compile(r"composed (\d+) \((\d+) calls, (\d+) tokens, "
                         r"peak (\d+) in flight, (\d+) ms\)")


# ------------------------------------------------------------- sources ----

class TimedLeads(LeadStub):
    """The lead source, noting when its first lookup of a run arrived."""

    def __init__(self):
        super().__init__()
        self.first = None

    def reset_counters(self):
        super().reset_counters()
        with self._lock:
            self.first = None

    def _begin(self, lead, raw):
        now = time.monotonic()
        with self._lock:
            if self.first is None:
                self.first = now
        return super()._begin(lead, raw)


def lead_name(lead):
    return f"Lead {lead[-3:]}"


def add_leads(leads_stub, leads):
    for lead in leads:
        leads_stub.set(lead, {"lead": {"id": lead, "name": lead_name(lead)}})


def request_body(lead):
    """What sluice sends for a lead (the prompt rendered as it renders it)."""
    user = USER.replace("{{lead.name}}", lead_name(lead)).replace(
        "{{vars.offer}}", "20% off")
    return {"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": TEMPERATURE,
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": user}]}


def model_window(model):
    """(first call's arrival, last answer's end) of what the model saw."""
    calls = [c for c in model.recorded() if c.t_end is not None]
    return min(c.t_start for c in calls), max(c.t_end for c in calls)


def fresh_run(model, leads_stub):
    """Forget the counters and start the latency sequence again."""
    model.reset()
    model.set_lognormal(MEDIAN, P95, SEED)
    leads_stub.reset_counters()


# ---------------------------------------------------------- baselines ----

class Caller:
    """HTTP/1.1 keep-alive calls to the model, one connection per thread."""

    def __init__(self, model):
        self.port = model.port
        self.local = threading.local()

    def _conn(self):
        c = getattr(self.local, "conn", None)
        if c is None:
            c = self.local.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                             timeout=120)
        return c

    def compose(self, lead):
        conn = self._conn()
        conn.request("POST", "/v1/chat/completions",
                      body=json.dumps(request_body(lead)).encode(),
                      headers={"Content-Type": "application/json",
                               "Authorization": f"Bearer {KEY}"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"model answered {r.status}: {data[:200]!r}")
        return json.loads(data)["choices"][0]["message"]["content"]

    def lookup(self, leads_port, lead):
        c = getattr(self.local, "lconn", None)
        if c is None:
            c = self.local.lconn = http.client.HTTPConnection("127.0.0.1", leads_port,
                                                              timeout=30)
        c.request("GET", f"/leads/{lead}")
        r = c.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"lead source answered {r.status}")
        return json.loads(data)


def chunked(model, leads_stub, leads):
    """The old system: chunks of 5 calls awaited together, one after the
    other. Returns (model window ms, peak)."""
    fresh_run(model, leads_stub)
    caller = Caller(model)
    with ThreadPoolExecutor(max_workers=OLD_CHUNK) as pool:
        for i in range(0, len(leads), OLD_CHUNK):
            list(pool.map(caller.compose, leads[i:i + OLD_CHUNK]))
    t0, t1 = model_window(model)
    model.assert_clean()
    return (t1 - t0) * 1000.0, model.peak, model.latencies()


def two_stages(model, leads_stub, leads, k):
    """Every lookup first (LOOKUP_K at a time), then composition K at a
    time in a sliding window. Returns the first lookup to the last answer
    in ms, and the lookup stage alone."""
    fresh_run(model, leads_stub)
    caller = Caller(model)
    with ThreadPoolExecutor(max_workers=LOOKUP_K) as pool:
        list(pool.map(lambda lead: caller.lookup(leads_stub.port, lead), leads))
    t_lookups = time.monotonic()
    with ThreadPoolExecutor(max_workers=k) as pool:
        list(pool.map(caller.compose, leads))
    _, t1 = model_window(model)
    model.assert_clean()
    return (t1 - leads_stub.first) * 1000.0, (t_lookups - leads_stub.first) * 1000.0


# ------------------------------------------------------------- sluice ----

def batch(run_id, inbox, msgs):
    return {"run_id": run_id, "workspace_id": "bench-ws", "inbox_id": inbox,
            "end_time": "2099-01-01T00:00:00Z", "run_total": len(msgs),
            "prompt": {"system": SYSTEM, "user": USER}, "model": MODEL,
            "max_tokens": MAX_TOKENS, "temperature": TEMPERATURE,
            "messages": [{"message_id": m, "lead_id": lead, "vars": {"offer": "20% off"}}
                         for m, lead in msgs]}


def wait_ready(db, run_id, n, timeout, poll=0.01):
    """Until the run is finished; (time, {status: count})."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        row = db.execute("SELECT status FROM campaign_runs WHERE id = %s",
                         (run_id,)).fetchone()
        if row and row[0] == "finished":
            t = time.monotonic()
            got = dict(db.execute("SELECT status, count(*) FROM campaign_messages"
                                  " WHERE run_id = %s GROUP BY status", (run_id,)).fetchall())
            return t, got
        time.sleep(poll)
    raise SystemExit(f"run {run_id} not finished after {timeout} s")


def outbox_figures(db, run_id):
    """Tokens and models stored on the outbox rows (the composer's columns)."""
    try:
        row = db.execute("SELECT sum(prompt_tokens), sum(completion_tokens),"
                         " array_agg(DISTINCT model), max(compose_ms)"
                         " FROM campaign_messages WHERE run_id = %s", (run_id,)).fetchone()
    except Exception as exc:    # an older schema: say so, do not fail
        return {"error": str(exc).splitlines()[0]}
    return {"prompt_tokens": row[0], "completion_tokens": row[1],
            "models": row[2], "max_compose_ms": row[3]}


class Sluice:
    """sluice-ingest (a campaign source) and one sluice-worker at a time."""

    def __init__(self, env, tmp, model, leads_stub, db):
        self.env, self.tmp, self.model, self.leads, self.db = env, tmp, model, leads_stub, db
        self.tag = uuid.uuid4().hex[:8]
        self.topic = f"bench-compose-{self.tag}"
        self.inbox = f"bench-inbox-{self.tag}"
        self.keyfile = os.path.join(tmp, "model.key")
        with open(self.keyfile, "w") as f:
            f.write(KEY + "\n")
        os.chmod(self.keyfile, 0o600)
        self.iport = free_port()
        conf = os.path.join(tmp, "compose-ingest.conf")
        with open(conf, "w") as f:
            f.write(f"listen = 127.0.0.1:{self.iport}\nbrokers = {env['SLUICE_KAFKA_BROKERS']}\n"
                    f"topic = {self.topic}\nschema_dir = {REPO}/schemas\nlog_level = warn\n"
                    "source.sched.kind = campaign\nsource.sched.signature = none\n")
        self.ingest = daemon("sluice-ingest", conf, env, os.path.join(tmp, "compose-ingest.log"))
        wait_http(f"http://127.0.0.1:{self.iport}/readyz")
        db.execute("INSERT INTO inboxes (id, workspace_id, name, connected)"
                   " VALUES (%s, 'bench-ws', 'bench', true) ON CONFLICT (id) DO NOTHING",
                   (self.inbox,))
        self.worker = None

    def start_worker(self, name, k):
        conf = os.path.join(self.tmp, f"compose-worker-{name}.conf")
        env = self.env
        with open(conf, "w") as f:
            f.write(f"brokers = {env['SLUICE_KAFKA_BROKERS']}\ntopic = {self.topic}\n"
                    f"group_id = bench-compose-{self.tag}\n"
                    f"postgres_dsn = {env['SLUICE_POSTGRES_DSN']}\n"
                    f"redis_url = {env['SLUICE_REDIS_URL']}\n"
                    f"log_level = {os.environ.get('SLUICE_BENCH_LOG_LEVEL', 'info')}\n"
                    "lead_context.source = http\n"
                    f"lead_context.url = http://127.0.0.1:{self.leads.port}/leads/{{lead_id}}\n"
                    f"lead_context.concurrency = {LOOKUP_K}\n"
                    f"composer.base_url = {self.model.base_url}\n"
                    f"composer.api_key_file = {self.keyfile}\n"
                    "composer.headers = HTTP-Referer: https://x.example; X-Title: sluice\n"
                    f"composer.concurrency = {k}\ncomposer.rate = 0\n"
                    "composer.timeout_ms = 30000\ncomposer.retries = 3\n"
                    f"composer.default_model = {MODEL}\ncomposer.model_cache_ttl_s = 300\n")
        self.log = os.path.join(self.tmp, f"compose-worker-{name}.log")
        self.worker = daemon("sluice-worker", conf, env, self.log)
        # Warm-up: one message, so the worker owns the partitions and has
        # its connections before the clock starts; the model answers at once.
        self.model.set_latency(0)
        lead = f"cw-{self.tag}-{name}-warm"
        add_leads(self.leads, [lead])
        run = self.post(f"{self.tag}-{name}-warm", [(f"{self.tag}-{name}-warm-m", lead)])
        wait_ready(self.db, run, 1, 120, poll=0.05)

    def stop_worker(self):
        stop(self.worker)
        self.worker = None

    def post(self, run_id, msgs):
        code, body = post_batch(self.iport, batch(run_id, self.inbox, msgs))
        if code != 202:
            raise SystemExit(f"batch refused: HTTP {code} {body[:300]!r}")
        return run_id

    def run(self, name, leads):
        """One batch of len(leads) messages; the figures of the run."""
        add_leads(self.leads, leads)
        run_id = f"{self.tag}-{name}"
        mark = os.path.getsize(self.log)
        t_post = time.monotonic()
        self.post(run_id, [(f"{run_id}-m{i:03d}", lead) for i, lead in enumerate(leads)])
        t_done, statuses = wait_ready(self.db, run_id, len(leads), 900)
        t0, t1 = model_window(self.model)
        line = None
        end = time.time() + 10
        while line is None and time.time() < end:
            with open(self.log) as f:
                f.seek(mark)
                for ln in f:
                    if COMPOSED_RE.search(ln):
                        line = ln.strip()
            if line is None:
                time.sleep(0.05)
        snap = self.model.snapshot()
        usage = [c.response.get("usage", {}) for c in self.model.recorded()
                 if c.status == 200 and isinstance(c.response, dict)]
        return {
            "model_window_ms": round((t1 - t0) * 1000.0, 1),
            "lookup_to_last_answer_ms": round((t1 - self.leads.first) * 1000.0, 1),
            "post_to_ready_ms": round((t_done - t_post) * 1000.0, 1),
            "statuses": statuses, "calls": snap["total"], "counts": snap["counts"],
            "peak_model": snap["peak"], "request_errors": snap["errors"][:5],
            "connections": snap["connections"],
            "stub_prompt_tokens": sum(u.get("prompt_tokens", 0) for u in usage),
            "stub_completion_tokens": sum(u.get("completion_tokens", 0) for u in usage),
            "outbox": outbox_figures(self.db, run_id),
            "log_line": line,
            "headers_ok": all(c.headers.get("authorization") == f"Bearer {KEY}"
                              and c.headers.get("http-referer") == "https://x.example"
                              and c.headers.get("x-title") == "sluice"
                              for c in self.model.recorded()),
        }

    def close(self):
        if self.worker is not None:
            self.stop_worker()
        stop(self.ingest)


def has_composer():
    path = os.path.join(BUILD, "sluice-worker")
    if not os.path.exists(path):
        return False
    keys = subprocess.run([path, "--list-keys"], capture_output=True, text=True).stdout
    return "composer.base_url" in keys


# ---------------------------------------------------------------- main ----

def measure(a, env, tmp, with_sluice):
    model = LLMStub(api_key=KEY, model_map={MODEL: MODEL_REPORTED}).start()
    leads_stub = TimedLeads().start()
    leads_stub.delay = LOOKUP_S
    tag = uuid.uuid4().hex[:6]
    result = {"messages": a.messages, "seed": SEED,
              "latency_ms": {"median": MEDIAN * 1000, "p95": P95 * 1000},
              "lookup_ms": LOOKUP_S * 1000, "lookup_concurrency": LOOKUP_K,
              "targets": {"ratio_max": RATIO_TARGET, "speedup_at_k5_min": SPEEDUP_TARGET,
                          "rate_min": RATE_TARGET, "share_429_max": SHARE_429_TARGET},
              "sluice": with_sluice, "results": [], "rate_limited": []}
    sl = None
    db = None
    try:
        def leads_for(name):
            leads = [f"cl-{tag}-{name}-{i:03d}" for i in range(a.messages)]
            add_leads(leads_stub, leads)
            return leads

        base_leads = leads_for("base")
        ms, peak, lats = chunked(model, leads_stub, base_leads)
        result["chunked"] = {"ms": round(ms, 1), "peak": peak,
                             "ideal_ms": round(chunked_ideal_ms(lats, OLD_CHUNK), 1),
                             "latency_sum_ms": round(sum(lats) * 1000.0, 1)}
        print(f"compose: chunks of {OLD_CHUNK} awaited together: {ms:.0f} ms "
              f"(their ideal {result['chunked']['ideal_ms']:.0f} ms, peak {peak})", flush=True)

        if with_sluice:
            import psycopg
            db = psycopg.connect(env["SLUICE_POSTGRES_DSN"], autocommit=True)
            sl = Sluice(env, tmp, model, leads_stub, db)
        for k in a.ks:
            row = {"k": k}
            two, lookups = two_stages(model, leads_stub, base_leads, k)
            row.update({"two_stage_ms": round(two, 1), "two_stage_lookups_ms": round(lookups, 1)})
            if sl is not None:
                sl.start_worker(f"k{k}", k)
                try:
                    fresh_run(model, leads_stub)
                    got = sl.run(f"k{k}", leads_for(f"k{k}"))
                finally:
                    sl.stop_worker()
                lats = model.latencies()
                ideal = ideal_ms(lats, k)
                row.update(got)
                row.update({
                    "sluice_ms": got["model_window_ms"], "ideal_ms": round(ideal, 1),
                    "ratio": round(got["model_window_ms"] / ideal, 3),
                    "two_stage_gain": round(two / got["lookup_to_last_answer_ms"], 3)})
                if k == OLD_CHUNK:
                    row["speedup_vs_chunked"] = round(ms / got["model_window_ms"], 3)
            else:
                # Without sluice: the sliding window of the drawn latencies.
                row["ideal_ms"] = round(ideal_ms(model.latencies(), k), 1)
            result["results"].append(row)
            print(f"compose: K={k} done: {json.dumps({x: row[x] for x in row if x in ('sluice_ms', 'ideal_ms', 'two_stage_ms')})}",
                  flush=True)

        if sl is not None:
            for variant, retry_after in (("no Retry-After", None), ("Retry-After", "auto")):
                k = max(a.ks)
                name = "rl" if retry_after is None else "rlra"
                sl.start_worker(name, k)
                try:
                    fresh_run(model, leads_stub)
                    model.set_rate(a.rate, burst=a.rate, retry_after=retry_after)
                    got = sl.run(name, leads_for(name))
                finally:
                    model.set_rate(None)
                    sl.stop_worker()
                calls = model.recorded()
                ok = sorted(c.t_start for c in calls if c.status == 200)
                n429 = sum(1 for c in calls if c.status == 429)
                span = ok[-1] - min(c.t_start for c in calls)
                rate = (len(ok) - 1) / span if span > 0 else float("nan")
                got.update({"variant": variant, "k": k, "limit_per_s": a.rate,
                            "accepted": len(ok), "answered_429": n429,
                            "calls_per_s": round(rate, 3),
                            "rate_ratio": round(rate / a.rate, 3),
                            "share_429": round(n429 / len(calls), 4),
                            "best_per_s": round((len(ok) - 1) / ((len(ok) - a.rate) / a.rate), 3)})
                result["rate_limited"].append(got)
    finally:
        if sl is not None:
            sl.close()
        if db is not None:
            db.close()
        model.stop()
        leads_stub.stop()
    return result


def report(r):
    n = r["messages"]
    print(f"\ncompose: {n} messages, model latency lognormal median {MEDIAN * 1000:.0f} ms "
          f"p95 {P95 * 1000:.0f} ms (seed {SEED}); lead source {LOOKUP_S * 1000:.0f} ms a lookup, "
          f"{LOOKUP_K} at a time")
    ch = r["chunked"]
    print(f"  old system, chunks of {OLD_CHUNK} awaited together: {ch['ms']:.0f} ms "
          f"(latency sum {ch['latency_sum_ms']:.0f} ms)")
    if not r["sluice"]:
        print("   K  ideal ms  two stages ms (lookups ms)   [no composer in this sluice-worker:"
              " baselines only]")
        for row in r["results"]:
            print(f"  {row['k']:2d}  {row['ideal_ms']:8.0f}  {row['two_stage_ms']:13.0f} "
                  f"({row['two_stage_lookups_ms']:.0f})")
        return
    print("   K  sluice ms  ideal ms  sluice/ideal  two stages ms  two/sluice  "
          "POST->ready ms  peak  calls  ready")
    for row in r["results"]:
        print(f"  {row['k']:2d}  {row['sluice_ms']:9.0f}  {row['ideal_ms']:8.0f}  {row['ratio']:12.2f}"
              f"  {row['two_stage_ms']:13.0f}  {row['two_stage_gain']:10.3f}  {row['post_to_ready_ms']:14.0f}"
              f"  {row['peak_model']:4d}  {row['calls']:5d}  {row['statuses'].get('ready', 0):5d}")
    for row in r["results"]:
        if row["calls"] != n or row["statuses"].get("ready", 0) != n:
            print(f"  K={row['k']}: {row['calls']} calls, statuses {row['statuses']} (expected {n}"
                  " calls, all ready)")
        if row["request_errors"]:
            print(f"  K={row['k']}: requests the API refuses: {row['request_errors']}")
        ob = row["outbox"]
        if ob.get("prompt_tokens") != row["stub_prompt_tokens"] or \
                ob.get("completion_tokens") != row["stub_completion_tokens"]:
            print(f"  K={row['k']}: outbox tokens {ob} vs the model's "
                  f"{row['stub_prompt_tokens']}/{row['stub_completion_tokens']}")
        if not row["headers_ok"]:
            print(f"  K={row['k']}: a call without the key or composer.headers")
        if row["log_line"] is None:
            print(f"  K={row['k']}: no 'composed N (...)' batch log line")
    worst = max(row["ratio"] for row in r["results"])
    print(f"compose: sluice/ideal at most {worst:.2f} (target <= {RATIO_TARGET})")
    k5 = [row for row in r["results"] if row["k"] == OLD_CHUNK]
    if k5:
        print(f"compose: chunks of {OLD_CHUNK}/sluice at K={OLD_CHUNK} "
              f"{k5[0]['speedup_vs_chunked']:.2f} (target >= {SPEEDUP_TARGET})")
    print(f"compose: 429 regime, the model allows {r['rate_limited'][0]['limit_per_s'] if r['rate_limited'] else '?'}"
          " calls/s (bucket of as many), K=" +
          (str(r["rate_limited"][0]["k"]) if r["rate_limited"] else "?"))
    for g in r["rate_limited"]:
        print(f"  {g['variant']:15s} accepted {g['calls_per_s']:.2f} calls/s = {g['rate_ratio']:.3f} x "
              f"the limit (target >= {RATE_TARGET}; at best {g['best_per_s']:.2f}/s), "
              f"429s {g['answered_429']} of {g['calls']} = {g['share_429'] * 100:.1f} % "
              f"(target <= {SHARE_429_TARGET * 100:.0f} %), ready "
              f"{g['statuses'].get('ready', 0)}/{n}, POST->ready {g['post_to_ready_ms']:.0f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ks", default="5,10,20")
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--rate", type=int, default=8)
    ap.add_argument("--baselines-only", action="store_true")
    ap.add_argument("--services", help="running services to use (DIR with services.env)")
    a = ap.parse_args()
    a.ks = [int(k) for k in a.ks.split(",")]
    with_sluice = not a.baselines_only and has_composer()
    if not with_sluice and not a.baselines_only:
        print("compose: this sluice-worker has no composer (composer.base_url): "
              "measuring the baselines alone", flush=True)
    tmp = tempfile.mkdtemp(prefix="sluice-bench-compose-")
    svc = env = None
    if with_sluice:
        svc, env = start_services(tmp, a.services)
        env.pop("SLUICE_TOPIC", None)   # the configs name their own topic
    try:
        r = measure(a, env, tmp, with_sluice)
    finally:
        if svc is not None:
            end_services(tmp, svc, a.services)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report(r)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(r, f, indent=2)
        f.write("\n")
    print(f"compose: wrote {os.path.relpath(OUT, REPO)}")


if __name__ == "__main__":
    main()
