#!/usr/bin/env python3
"""sluice benchmark: inbound chat, messages to turns (docs/chat.md).

Real sluice-ingest (a `chat` source) and sluice-worker, WhatsApp webhooks of
one text message each, posted by Python threads over keep-alive HTTP.

  latency  RATE messages/s from SENDERS people for SECONDS (open loop: the
           k-th message of sender i is due at t0 + (k * SENDERS + i) / RATE;
           a sender whose previous message has not been notified yet holds
           its next one, counted as "held", so every NOTIFY is attributed
           to exactly one message). Measured per message: from its 202 to
           the NOTIFY on sluice_turns naming its conversation
           ("<business>:<sender>", received by a psycopg LISTEN in a thread
           of a process of its own). Next to it: the 10,000 ms the seed's
           buffer waited by design before handing a message over, as a
           ratio. No agent claims in this part: each conversation keeps one
           open turn. Each message's 202 -> NOTIFY is cut into hops from the
           worker's batch log lines (when each batch started, its lookups
           ended, it committed) and its row's inserted_at (now(): when its
           batch's transaction began): waiting for the worker to finish the
           batch before; the fetch and poll until its own batch started;
           the batch's lookups; its transaction to COMMIT; COMMIT to the
           listener. The floor, in the same run: PostgreSQL alone, one-row
           INSERT + pg_notify transactions at 50/s beside sluice's load,
           then at RATE/s right after it, timed from the statement's start
           and from COMMIT's return to the NOTIFY's arrival. The goal: p99
           of 202 -> NOTIFY under 50 ms.
  agents   AGENTS simulated busy agents (each claims a turn with
           sluice_claim_turn, holds it HOLD ms, answers it with
           sluice_answer_turn, and waits on LISTEN when nothing is
           claimable) while BURST_SENDERS people type bursts (2-4 messages,
           100-400 ms apart, then 1-3 s of quiet; fixed seed) for SECONDS,
           then until every turn is answered. Reported: messages, bursts,
           turns formed and the mean messages per turn, the wait from a
           turn's first and last message's 202 to its claim, and the
           invariants (every message in exactly one turn, in order; never
           two claimed turns of one conversation at once).

Both parts use a private database created for the run in the services'
PostgreSQL (sluice_claim_turn claims any open turn, so other turns must not
be there), migrated with deploy/migrate.sh and dropped afterwards.
Results: bench/out/chat.json.

Usage: bench/chat.py [--rate 1000] [--senders 200] [--seconds 10]
                     [--agents 20] [--hold-ms 500] [--burst-senders 50]
                     [--warmup 5] [--only latency|agents] [--services DIR]
  --services DIR   use the services already running in DIR (services.env)
                   and leave them running; default: start private ones in a
                   temporary directory and destroy them afterwards.
"""
import argparse
import contextlib
import datetime
import http.client
import io
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import (BUILD, REPO, as_role, daemon, end_services,  # noqa: E402
                      free_port, start_services, stop, wait_http)

OUT = os.path.join(REPO, "bench", "out", "chat.json")

SEED = 20261123
SEED_BUFFER_MS = 10000.0      # what the seed's buffer waited, by design
GOAL_P99_MS = 50.0            # 202 -> NOTIFY at 1,000 messages/s (the brief)
BUSINESS = "15550009999"
PHONE_NUMBER_ID = "900000000000001"
BURST_LEN = (2, 4)            # messages per burst, inclusive
BURST_GAP = (0.100, 0.400)    # seconds between a burst's messages
BURST_PAUSE = (1.0, 3.0)      # seconds of quiet between bursts
BATCH_RE = re.compile(r"batch of (\d+) records in (\d+) ms")
# The worker's one line per batch: when it was written (after the commit and
# the cache step), the batch's time and its split.
BATCH_LINE_RE = re.compile(r"^(\S+Z) \S+ \w+: batch of (\d+) records in (\d+) ms \(lookups (\d+) ms,"
                           r" database (\d+) ms, cache (\d+) ms\): chat: ")


def pct(values, p):
    """Nearest-rank percentile of a list (None when empty)."""
    if not values:
        return None
    v = sorted(values)
    return v[max(0, min(len(v) - 1, math.ceil(p / 100.0 * len(v)) - 1))]


def summary(values):
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    return {"n": len(values), "p50": round(pct(values, 50), 2), "p99": round(pct(values, 99), 2),
            "max": round(max(values), 2), "mean": round(sum(values) / len(values), 2)}


def webhook(sender, mid, text):
    """One WhatsApp Cloud API webhook holding one text message, as Meta sends it."""
    return json.dumps({
        "object": "whatsapp_business_account",
        "entry": [{"id": "BENCH_WABA", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": BUSINESS, "phone_number_id": PHONE_NUMBER_ID},
            "contacts": [{"profile": {"name": f"Bench {sender[-4:]}"}, "wa_id": sender}],
            "messages": [{"from": sender, "id": mid, "timestamp": str(int(time.time())),
                          "type": "text", "text": {"body": text}}]}}]}]}).encode()


class Poster:
    """A keep-alive HTTP/1.1 connection to sluice-ingest."""

    def __init__(self, port, path):
        self.port, self.path = port, path
        self.conn = None

    def post(self, body):
        """(status, t_sent, t_answer): t_answer when the status line arrived."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                t_sent = time.perf_counter()
                self.conn.request("POST", self.path, body, {"Content-Type": "application/json"})
                r = self.conn.getresponse()
                t_answer = time.perf_counter()
                r.read()
                return r.status, t_sent, t_answer
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()


# ----------------------------------------------------- part 1: latency ----

class Msg:
    __slots__ = ("mid", "due", "t_sent", "t_202", "t_notify", "status", "held")

    def __init__(self, mid, due):
        self.mid, self.due = mid, due
        self.t_sent = self.t_202 = self.t_notify = None
        self.status = None
        self.held = False


class Sender:
    """One person: at most one message between its POST and its NOTIFY."""

    def __init__(self, wa_id):
        self.wa_id = wa_id
        self.lock = threading.Lock()
        self.cur = None            # the Msg waiting for its NOTIFY
        self.notified = threading.Event()
        self.notified.set()
        self.stray = 0             # NOTIFYs with no message waiting
        self.msgs = []

    def start(self, msg):
        with self.lock:
            self.cur = msg
            self.notified.clear()
            msg.t_sent = time.perf_counter()   # refined by the POST itself

    def on_notify(self, t):
        with self.lock:
            if self.cur is not None and self.cur.t_notify is None:
                self.cur.t_notify = t
                self.cur = None
                self.notified.set()
            else:
                self.stray += 1


def listener_process(dsn, channel, wfd):
    """A process of its own LISTENing on channel: one line "t payload" per
    NOTIFY to wfd, t its perf_counter() on arrival (CLOCK_MONOTONIC, the
    same clock as the senders'), away from the 200 sender threads' GIL so
    the stamp is the arrival, not the next time the thread got to run.
    The first line, "ready", once the LISTEN is in place."""
    import psycopg
    out = os.fdopen(wfd, "w", buffering=1)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"LISTEN {channel}")
        out.write("ready\n")
        for n in conn.notifies():
            t = time.perf_counter()
            out.write(f"{t!r} {n.payload}\n")


class Listener:
    """listener_process() and the thread that hands its lines to on_notify."""

    def __init__(self, dsn, channel, on_notify):
        import multiprocessing
        r, w = os.pipe()
        self.proc = multiprocessing.get_context("fork").Process(
            target=listener_process, args=(dsn, channel, w), daemon=True)
        self.proc.start()
        os.close(w)
        self.rf = os.fdopen(r)
        if self.rf.readline().strip() != "ready":
            raise SystemExit(f"the LISTEN on {channel} did not come up")
        self.thread = threading.Thread(target=self.run, args=(on_notify,), daemon=True)
        self.thread.start()

    def run(self, on_notify):
        for line in self.rf:
            t, payload = line.rstrip("\n").split(" ", 1)
            on_notify(float(t), payload)

    def close(self):
        self.proc.terminate()
        self.proc.join(5)
        self.thread.join(5)


def wall_offset():
    """time.time() - time.perf_counter(), from the closest of a few reads:
    turns the clients' perf_counter stamps into the wall clock that
    PostgreSQL's and the worker log's timestamps are in (same host)."""
    best = None
    for _ in range(50):
        a = time.perf_counter()
        w = time.time()
        b = time.perf_counter()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) / 2)
    return best[1]


def chat_batches(log, mark):
    """The chat batches the worker logged after byte mark, in order:
    dicts of start, begin (its lookups done), commit and end, wall-clock
    seconds. The line is written at end; its figures are whole ms."""
    out = []
    with open(log) as f:
        f.seek(mark)
        for ln in f:
            m = BATCH_LINE_RE.match(ln)
            if not m:
                continue
            end = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                tzinfo=datetime.timezone.utc).timestamp()
            total, lookups, _db, cache = (int(m.group(i)) / 1000.0 for i in (3, 4, 5, 6))
            out.append({"n": int(m.group(2)), "start": end - total, "prepared": end - total + lookups,
                        "commit": end - cache, "end": end})
    return out


HOPS = (
    ("queued", "202 -> worker free", "202 until the worker finished the batch before"),
    ("fetch", "worker free -> batch", "then until the record's batch started (the fetch, the poll)"),
    ("prepare", "batch -> BEGIN", "batch start until its transaction began (lookups, staging)"),
    ("statement", "BEGIN -> COMMIT", "the transaction: fence, COPY, the statement, offsets, COMMIT"),
    ("notify", "COMMIT -> NOTIFY", "COMMIT done until the listener had the NOTIFY"),
)


def hops_of(msgs, rows, batches, off):
    """Per message, 202 -> NOTIFY cut where the worker's log and the row say:
    rows is {mid: inserted_at}, now() in the batch's transaction, the same
    for all its rows and after the batch's start, so the transactions in
    time order are the logged batches in order (checked by their sizes;
    else each goes to the last batch started by then). Milliseconds per
    hop, and how many messages were placed."""
    import bisect
    by_tx = {}
    for m in msgs:
        if rows.get(m.mid) is not None and m.t_notify is not None and m.t_202 is not None:
            by_tx.setdefault(rows[m.mid], []).append(m)
    txs = sorted(by_tx)
    if len(txs) == len(batches) and all(len(by_tx[t]) == b["n"] for t, b in zip(txs, batches)):
        batch_of = {t: i for i, t in enumerate(txs)}
    else:
        starts = [b["start"] for b in batches]
        batch_of = {}
        for t in txs:
            i = bisect.bisect_right(starts, t + 0.001) - 1
            if i >= 0 and t <= batches[i]["end"] + 0.001:
                batch_of[t] = i
    out = {h[0]: [] for h in HOPS}
    placed = 0
    for ins, ms in by_tx.items():
        i = batch_of.get(ins)
        if i is None:
            continue
        b = batches[i]
        prev_end = batches[i - 1]["end"] if i > 0 else None
        # The log's figures are whole ms: keep BEGIN within its batch.
        begin = min(max(ins, b["start"]), b["commit"])
        for m in ms:
            t202, tn = m.t_202 + off, m.t_notify + off
            free = t202 if prev_end is None else max(t202, min(b["start"], prev_end))
            out["queued"].append((free - t202) * 1000.0)
            out["fetch"].append((b["start"] - free) * 1000.0)
            out["prepare"].append((begin - b["start"]) * 1000.0)
            out["statement"].append((b["commit"] - begin) * 1000.0)
            out["notify"].append((tn - b["commit"]) * 1000.0)
            placed += 1
    return {k: summary(v) for k, v in out.items()}, placed


def print_hops(hops, placed, total):
    print(f"  per hop ({placed} of {total} messages placed in their batch; worker log in whole ms)")
    print("                       p50 ms   p99 ms   max ms")
    for key, name, _ in HOPS:
        v = hops[key]
        if v["n"]:
            print(f"  {name:20s}{v['p50']:7.1f}  {v['p99']:7.1f}  {v['max']:7.1f}")


def bench_latency(env, iport, dsn, log, rate, n_senders, seconds, tag):
    import psycopg
    senders = {}
    order = []
    for i in range(n_senders):
        s = Sender(f"1{tag}{i:04d}")
        senders[s.wa_id] = s
        order.append(s)
    counts = {"notifies": 0, "foreign": 0}

    def on_notify(t, payload):
        counts["notifies"] += 1
        s = senders.get(payload.rsplit(":", 1)[-1])
        if s is None:
            counts["foreign"] += 1
        else:
            s.on_notify(t)

    listener = Listener(as_role(dsn, "sluice_agent"), "sluice_turns", on_notify)
    # The floor under the same load: a few transactions/s of PostgreSQL
    # alone, beside sluice's run, so both see the box in the same state.
    probe = Floor(dsn, "bench_floor_probe")

    errors = []
    warmed = threading.Barrier(n_senders + 1)
    start = threading.Barrier(n_senders + 1)
    clock = {}

    def send(s, msg, poster):
        s.start(msg)
        try:
            code, t_sent, t_answer = poster.post(webhook(s.wa_id, msg.mid, f"message {msg.mid[-6:]}"))
        except Exception as e:   # noqa: BLE001 - counted and reported
            errors.append(f"{s.wa_id}: {e}")
            s.on_notify(None)    # release the sender
            return
        msg.status = code
        msg.t_sent, msg.t_202 = t_sent, t_answer
        if code != 202:
            errors.append(f"{s.wa_id}: HTTP {code}")
            s.on_notify(None)

    def run(i, s):
        poster = Poster(iport, "/v1/webhooks/wa")
        try:
            # Warm-up: one message each, so the worker owns its partitions
            # and has its connections (and Redis its lookups) before t0.
            send(s, Msg(f"wamid.bench-{tag}-{s.wa_id}-w", 0.0), poster)
            s.notified.wait(60)
            try:
                warmed.wait()
                start.wait()
            except threading.BrokenBarrierError:
                return
            t0, end = clock["t0"], clock["t0"] + seconds
            k = 0
            while True:
                due = t0 + (k * n_senders + i) / rate
                if due >= end:
                    break
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                msg = Msg(f"wamid.bench-{tag}-{s.wa_id}-{k}", due)
                if not s.notified.is_set():
                    msg.held = True
                    if not s.notified.wait(30):
                        errors.append(f"{s.wa_id}: no NOTIFY for the previous message in 30 s")
                        break
                s.msgs.append(msg)
                send(s, msg, poster)
                k += 1
            s.notified.wait(30)
        finally:
            poster.close()

    threads = [threading.Thread(target=run, args=(i, s), daemon=True) for i, s in enumerate(order)]
    for t in threads:
        t.start()
    warmed.wait()
    warm_missing = sum(1 for s in order if not s.notified.is_set())
    if warm_missing:
        start.abort()
        listener.close()
        probe.listener.close()
        raise SystemExit(f"latency: {warm_missing} of {n_senders} warm-up messages got no NOTIFY"
                         f" in 60 s (errors: {errors[:3]})")
    time.sleep(0.5)
    mark = os.path.getsize(log)
    off = wall_offset()
    counts["notifies"] = counts["foreign"] = 0
    for s in order:
        s.stray = 0
    clock["t0"] = time.perf_counter() + 0.2
    pt = threading.Thread(target=probe.run, args=(PROBE_RATE, seconds, 1, clock["t0"]), daemon=True)
    pt.start()
    start.wait()
    for t in threads:
        t.join()
    pt.join()
    listener.close()
    floor_in_run = probe.result()

    msgs = [m for s in order for m in s.msgs]
    ok = [m for m in msgs if m.status == 202]
    notified = [m for m in ok if m.t_notify is not None]
    lat = [(m.t_notify - m.t_202) * 1000.0 for m in notified]
    post_notify = [(m.t_notify - m.t_sent) * 1000.0 for m in notified]
    post_202 = [(m.t_202 - m.t_sent) * 1000.0 for m in ok]
    start_lag = [(m.t_sent - m.due) * 1000.0 for m in ok]
    last = max((m.t_sent for m in ok), default=clock["t0"])
    achieved = len(ok) / max(last - clock["t0"], 1e-9)

    batches = []
    with open(log) as f:
        f.seek(mark)
        for ln in f:
            b = BATCH_RE.search(ln)
            if b:
                batches.append((int(b.group(1)), int(b.group(2))))

    with psycopg.connect(dsn, autocommit=True) as db:
        wa = [s.wa_id for s in order]
        stored = db.execute("SELECT count(*) FROM chat_messages WHERE sender = ANY(%s)",
                            (wa,)).fetchone()[0]
        inserted = dict(db.execute(
            "SELECT provider_message_id, extract(epoch FROM inserted_at)::float8"
            " FROM chat_messages WHERE sender = ANY(%s)", (wa,)).fetchall())
        turns, in_turns = db.execute(
            "SELECT count(*), coalesce(sum(cardinality(message_ids)), 0) FROM chat_turns"
            " WHERE sender = ANY(%s)", (wa,)).fetchone()
        # Done with these conversations: the agents of part 2 must not
        # claim them.
        db.execute("UPDATE chat_turns SET status = 'answered', answered_at = now()"
                   " WHERE sender = ANY(%s) AND status <> 'answered'", (wa,))

    hops, placed = hops_of(notified, inserted, chat_batches(log, mark), off)
    res = {
        "rate_target": rate, "senders": n_senders, "seconds": seconds,
        "sent": len(msgs), "accepted": len(ok), "notified": len(notified),
        "rate_achieved": round(achieved, 1),
        "held": sum(1 for m in msgs if m.held),
        "errors": len(errors), "error_examples": errors[:5],
        "stray_notifies": sum(s.stray for s in order),
        "foreign_notifies": counts["foreign"],
        "notify_before_202": sum(1 for x in lat if x < 0),
        "latency_202_to_notify_ms": summary(lat),
        "post_to_notify_ms": summary(post_notify),
        "post_to_202_ms": summary(post_202),
        "send_lag_ms": summary(start_lag),
        "hops_ms": hops, "hops_placed": placed,
        "floor_in_run": floor_in_run,
        "hops": {k: d for k, _, d in HOPS},
        "seed_buffer_ms": SEED_BUFFER_MS,
        "seed_over_p50": round(SEED_BUFFER_MS / pct(lat, 50), 1) if lat and pct(lat, 50) > 0 else None,
        "seed_over_p99": round(SEED_BUFFER_MS / pct(lat, 99), 1) if lat and pct(lat, 99) > 0 else None,
        "worker_batches": len(batches),
        "worker_records_per_batch": round(sum(b[0] for b in batches) / len(batches), 2) if batches else None,
        "worker_batch_ms": summary([float(b[1]) for b in batches]),
        "db": {"messages": stored, "turns": turns, "messages_in_turns": in_turns,
               "expected_messages": len(ok) + n_senders},
    }

    L, P, A = res["latency_202_to_notify_ms"], res["post_to_notify_ms"], res["post_to_202_ms"]
    print(f"chat latency: {len(ok)} messages in {seconds} s from {n_senders} senders"
          f" (target {rate}/s, achieved {achieved:.0f}/s; {res['held']} held for the previous"
          f" NOTIFY, {len(errors)} errors)")
    print("                       p50 ms   p99 ms   max ms")
    for name, v in (("202 -> NOTIFY", L), ("POST -> NOTIFY", P), ("POST -> 202", A)):
        if v["n"]:
            print(f"  {name:17s}  {v['p50']:7.1f}  {v['p99']:7.1f}  {v['max']:7.1f}")
    if L["n"]:
        print(f"  seed buffer (by design)  {SEED_BUFFER_MS:7.0f} ms: {res['seed_over_p50']}x the p50,"
              f" {res['seed_over_p99']}x the p99 of 202 -> NOTIFY")
    print_hops(hops, placed, len(notified))
    print_floor("  floor in the same run, PostgreSQL alone beside it", floor_in_run)
    print(f"  worker: {len(batches)} batches, {res['worker_records_per_batch']} records each on"
          f" average; NOTIFYs: {counts['notifies']} ({res['stray_notifies']} unmatched,"
          f" {res['notify_before_202']} before the client saw the 202)")
    print(f"  database: {stored} messages of {len(ok) + n_senders} accepted (with warm-up),"
          f" {in_turns} in {turns} open turns (no agent: one turn per conversation)")
    if len(notified) != len(ok):
        print(f"  {len(ok) - len(notified)} accepted messages got no NOTIFY")
    return res


# ------------------------------------------------- the floor: PostgreSQL ----

FLOOR_WRITERS = 4
PROBE_RATE = 50               # the floor's transactions/s during sluice's run


class Floor:
    """PostgreSQL's own commit-to-NOTIFY on this box: transactions of one
    INSERT that calls pg_notify with its own id, then COMMIT, from WRITERS
    connections, each an open loop of RATE/WRITERS transactions/s; the
    NOTIFY arrives at the same kind of listener process as sluice's. Timed:
    from the statement's start and from COMMIT's return to the arrival.
    Made before any sender thread starts (its listener is a fork)."""

    def __init__(self, dsn, channel):
        import psycopg
        self.dsn, self.channel = dsn, channel
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(f"CREATE TABLE IF NOT EXISTS {channel} (id bigint PRIMARY KEY,"
                       " payload text, at timestamptz NOT NULL DEFAULT now())")
            # The warm-up's probe wrote to the same table: ids go on after
            # its rows instead of colliding with them.
            self.first_id = db.execute(f"SELECT coalesce(max(id) + 1, 0) FROM {channel}"
                                       ).fetchone()[0]
        self.arrived = {}
        self.listener = Listener(dsn, channel,
                                 lambda t, payload: self.arrived.__setitem__(payload, t))
        self.sent = {}          # payload -> (t statement start, t COMMIT returned)
        self.errors = []

    def run(self, rate, seconds, writers, t0):
        import psycopg
        first_id = self.first_id

        def writer(w):
            with psycopg.connect(self.dsn) as conn:
                k = 0
                while True:
                    due = t0 + (k * writers + w) / rate
                    if due >= t0 + seconds:
                        break
                    now = time.perf_counter()
                    if due > now:
                        time.sleep(due - now)
                    i = first_id + k * writers + w
                    try:
                        t_stmt = time.perf_counter()
                        conn.execute(f"WITH r AS (INSERT INTO {self.channel} (id, payload)"
                                     " VALUES (%s, %s) RETURNING payload)"
                                     f" SELECT pg_notify('{self.channel}', payload) FROM r",
                                     (i, str(i)))
                        conn.commit()
                        self.sent[str(i)] = (t_stmt, time.perf_counter())
                    except psycopg.Error as e:
                        self.errors.append(str(e))
                        conn.rollback()
                    k += 1

        threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.rate, self.seconds, self.writers = rate, seconds, writers

    def result(self):
        end = time.time() + 5
        while time.time() < end and len(self.arrived) < len(self.sent):
            time.sleep(0.05)
        self.listener.close()
        got = [(self.sent[k], self.arrived[k]) for k in self.sent if k in self.arrived]
        return {"rate_target": self.rate, "seconds": self.seconds, "writers": self.writers,
                "committed": len(self.sent), "notified": len(got), "errors": len(self.errors),
                "error_examples": self.errors[:3],
                "commit_to_notify_ms": summary([(a - c) * 1000.0 for (_, c), a in got]),
                "statement_to_notify_ms": summary([(a - st) * 1000.0 for (st, _), a in got])}


def print_floor(title, res):
    C, S = res["commit_to_notify_ms"], res["statement_to_notify_ms"]
    print(f"{title}: {res['committed']} INSERT + pg_notify transactions in {res['seconds']:g} s"
          f" on {res['writers']} connections (target {res['rate_target']}/s), {res['notified']}"
          f" notified, {res['errors']} errors{': ' if res['errors'] else ''}"
          f"{'; '.join(res['error_examples'])}")
    print("                       p50 ms   p99 ms   max ms")
    for name, v in (("COMMIT -> NOTIFY", C), ("statement -> NOTIFY", S)):
        if v["n"]:
            print(f"  {name:20s}{v['p50']:7.1f}  {v['p99']:7.1f}  {v['max']:7.1f}")


def bench_floor(dsn, rate, seconds):
    """The floor alone, at sluice's rate, right after sluice's run."""
    f = Floor(dsn, "bench_floor")
    f.run(rate, seconds, FLOOR_WRITERS, time.perf_counter() + 0.2)
    res = f.result()
    print_floor("floor, PostgreSQL alone at the same rate, right after", res)
    return res


# ------------------------------------------------------ part 2: agents ----

def bench_agents(env, iport, dsn, n_agents, hold_ms, n_senders, seconds, tag):
    import psycopg
    rng = random.Random(SEED)
    plans = []
    for i in range(n_senders):
        # Per sender: (delay before the message, burst number), fixed seed.
        plan, t, b = [], rng.uniform(0, BURST_PAUSE[1]), 0
        while t < seconds:
            n = rng.randint(*BURST_LEN)
            for j in range(n):
                plan.append((t, b))
                t += rng.uniform(*BURST_GAP) if j < n - 1 else rng.uniform(*BURST_PAUSE)
            b += 1
        plans.append((f"2{tag}{i:04d}", plan))

    sent = {}          # mid -> (sender, burst, t_202)
    per_sender = {}    # sender -> [mid in the order sent]
    errors = []
    lock = threading.Lock()
    go = threading.Barrier(n_senders + n_agents + 1)
    clock = {}
    claims = []        # (agent, turn id, sender, message_ids, t_claim, t_answer)
    doubles = []       # a claim that found another claimed turn of its conversation
    stop = threading.Event()

    def person(wa_id, plan):
        poster = Poster(iport, "/v1/webhooks/wa")
        mids = per_sender.setdefault(wa_id, [])
        try:
            go.wait()
            t0 = clock["t0"]
            for k, (at, burst) in enumerate(plan):
                now = time.perf_counter()
                if t0 + at > now:
                    time.sleep(t0 + at - now)
                mid = f"wamid.bench-{tag}-{wa_id}-{k}"
                try:
                    code, _, t_answer = poster.post(webhook(wa_id, mid, f"part {k} of burst {burst}"))
                except Exception as e:   # noqa: BLE001 - counted and reported
                    errors.append(f"{wa_id}: {e}")
                    continue
                if code != 202:
                    errors.append(f"{wa_id}: HTTP {code}")
                    continue
                with lock:
                    sent[mid] = (wa_id, burst, t_answer)
                mids.append(mid)
        finally:
            poster.close()

    def agent(name):
        with psycopg.connect(as_role(dsn, "sluice_agent"), autocommit=True) as conn:
            conn.execute("LISTEN sluice_turns")
            go.wait()
            while True:
                row = conn.execute("SELECT id, sender, message_ids, business_number"
                                   " FROM sluice_claim_turn(%s)", (name,)).fetchone()
                if row is None:
                    if stop.is_set():
                        return
                    for _ in conn.notifies(timeout=0.2, stop_after=1):
                        pass
                    continue
                t_claim = time.perf_counter()
                # Right after the claim: the conversation's claimed turns,
                # as the database sees them now. More than this one is two
                # agents answering one person at once.
                both = conn.execute("SELECT array_agg(id ORDER BY id) FROM chat_turns"
                                    " WHERE business_number = %s AND sender = %s"
                                    " AND status = 'claimed'", (row[3], row[1])).fetchone()[0]
                if both and len(both) > 1:
                    with lock:
                        doubles.append(f"{row[1]}: turns {both} claimed at once"
                                       f" (just claimed {row[0]})")
                time.sleep(hold_ms / 1000.0)    # busy with the person
                conn.execute("SELECT sluice_answer_turn(%s)", (row[0],))
                t_answer = time.perf_counter()
                with lock:
                    claims.append((name, row[0], row[1], list(row[2]), t_claim, t_answer))

    people = [threading.Thread(target=person, args=p, daemon=True) for p in plans]
    agents = [threading.Thread(target=agent, args=(f"bench-agent-{a}",), daemon=True)
              for a in range(n_agents)]
    for t in people + agents:
        t.start()
    clock["t0"] = time.perf_counter() + 0.5
    go.wait()
    for t in people:
        t.join()
    t_sent_end = time.perf_counter()

    # Until every accepted message is in an answered turn (or 120 s).
    wa = [p[0] for p in plans]
    drained = False
    with psycopg.connect(dsn, autocommit=True) as db:
        end = time.time() + 120
        while time.time() < end:
            answered = db.execute(
                "SELECT coalesce(sum(cardinality(message_ids)), 0) FROM chat_turns"
                " WHERE sender = ANY(%s) AND status = 'answered'", (wa,)).fetchone()[0]
            if answered >= len(sent):
                drained = True
                break
            time.sleep(0.1)
        stop.set()
        for t in agents:
            t.join(10)
        t_drained = time.perf_counter()
        rows = db.execute("SELECT id, sender, status, message_ids, claimed_at, answered_at"
                          " FROM chat_turns WHERE sender = ANY(%s) ORDER BY sender, id",
                          (wa,)).fetchall()
        stored = db.execute("SELECT count(*) FROM chat_messages WHERE sender = ANY(%s)",
                            (wa,)).fetchone()[0]

    # Invariants.
    all_ids = [m for r in rows for m in r[3]]
    in_one_turn = len(all_ids) == len(set(all_ids)) and set(all_ids) == set(sent)
    got = {}
    for r in rows:
        got.setdefault(r[1], []).extend(r[3])
    in_order = all(got.get(s, []) == [m for m in mids if m in sent] for s, mids in per_sender.items())
    # Two claimed turns of one conversation at once: what each agent saw
    # right after its claim (doubles). Not from claimed_at / answered_at:
    # both are now(), the start of their transaction, so a claim that began
    # a few ms before the previous turn's answer committed, and took its
    # snapshot after, looks like an overlap there without being one; that
    # figure is kept as timestamp_overlaps, with its largest gap.
    overlaps, overlap_examples = len(doubles), doubles
    ts_overlaps, ts_gap = 0, 0.0
    by_sender = {}
    for r in rows:
        if r[4] is not None:
            by_sender.setdefault(r[1], []).append((r[4], r[5]))
    for iv in by_sender.values():
        iv.sort()
        for a, b in zip(iv, iv[1:]):
            if a[1] is not None and b[0] < a[1]:
                ts_overlaps += 1
                ts_gap = max(ts_gap, (a[1] - b[0]).total_seconds() * 1000.0)

    # Per turn: the wait from its first / last message's 202 to its claim.
    wait_first, wait_last, wait_single, wait_gathered, sizes = [], [], [], [], {}
    for c in claims:
        t202 = [sent[m][2] for m in c[3] if m in sent]
        if t202:
            wait_first.append((c[4] - min(t202)) * 1000.0)
            wait_last.append((c[4] - max(t202)) * 1000.0)
            (wait_single if len(c[3]) == 1 else wait_gathered).append(wait_first[-1])
        sizes[len(c[3])] = sizes.get(len(c[3]), 0) + 1
    bursts = len({(v[0], v[1]) for v in sent.values()})
    turns = len(rows)
    busy = sum(c[5] - c[4] for c in claims)
    elapsed = t_drained - clock["t0"]
    res = {
        "agents": n_agents, "hold_ms": hold_ms, "senders": n_senders, "seconds": seconds,
        "burst_len": BURST_LEN, "burst_gap_s": BURST_GAP, "burst_pause_s": BURST_PAUSE,
        "messages": len(sent), "messages_stored": stored, "bursts": bursts, "turns": turns,
        "turns_answered": sum(1 for r in rows if r[2] == "answered"),
        "claims_seen": len(claims),
        "messages_per_turn": round(len(sent) / turns, 3) if turns else None,
        "turns_per_burst": round(turns / bursts, 3) if bursts else None,
        "turn_sizes": {str(k): v for k, v in sorted(sizes.items())},
        "max_turn_size": max(sizes) if sizes else None,
        "wait_first_202_to_claim_ms": summary(wait_first),
        "wait_last_202_to_claim_ms": summary(wait_last),
        "wait_first_202_to_claim_ms_one_message_turns": summary(wait_single),
        "wait_first_202_to_claim_ms_gathered_turns": summary(wait_gathered),
        "agent_utilization": round(busy / (n_agents * elapsed), 3) if elapsed > 0 else None,
        "drain_s": round(t_drained - t_sent_end, 2), "drained": drained,
        "every_message_in_one_turn": in_one_turn, "order_kept": in_order,
        "overlapping_claims": overlaps, "overlap_examples": overlap_examples[:5],
        "timestamp_overlaps": ts_overlaps, "timestamp_overlap_max_ms": round(ts_gap, 2),
        "errors": len(errors), "error_examples": errors[:5],
        "seed_buffer_ms": SEED_BUFFER_MS,
    }
    F, W = res["wait_first_202_to_claim_ms"], res["wait_last_202_to_claim_ms"]
    print(f"chat agents: {n_agents} agents holding each turn {hold_ms} ms, {n_senders} people typing"
          f" bursts of {BURST_LEN[0]}-{BURST_LEN[1]} messages ({BURST_GAP[0] * 1000:.0f}-"
          f"{BURST_GAP[1] * 1000:.0f} ms apart, {BURST_PAUSE[0]:g}-{BURST_PAUSE[1]:g} s of quiet)"
          f" for {seconds} s")
    print(f"  {len(sent)} messages in {bursts} bursts became {turns} turns:"
          f" {res['messages_per_turn']} messages per turn (one turn per message would be 1.00),"
          f" {res['turns_per_burst']} turns per burst")
    print("  turn sizes: " + ", ".join(f"{k} msg x {v}" for k, v in sorted(sizes.items())))
    if F["n"]:
        print(f"  wait to the claim, ms    p50      p99      max   (seed buffer: {SEED_BUFFER_MS:.0f} ms"
              " before a message is even handed over)")
        print(f"    from the first 202  {F['p50']:7.1f}  {F['p99']:7.1f}  {F['max']:7.1f}")
        print(f"    from the last 202   {W['p50']:7.1f}  {W['p99']:7.1f}  {W['max']:7.1f}")
        for label, key in (("1-message turns", "wait_first_202_to_claim_ms_one_message_turns"),
                           ("gathered turns", "wait_first_202_to_claim_ms_gathered_turns")):
            v = res[key]
            if v["n"]:
                print(f"    first 202, {label:16s}{v['p50']:7.1f}  {v['p99']:7.1f}  {v['max']:7.1f}"
                      f"   ({v['n']} turns)")
    print(f"  agents busy {res['agent_utilization'] * 100:.0f}% of the time; drained"
          f" {res['drain_s']} s after the last message" + ("" if drained else " (NOT drained)"))
    print(f"  every message in exactly one turn: {'yes' if in_one_turn else 'NO'}; order kept:"
          f" {'yes' if in_order else 'NO'}; two claimed turns of one conversation: {overlaps}"
          f" (by claimed_at/answered_at, which are transaction starts: {ts_overlaps},"
          f" at most {ts_gap:.2f} ms); errors: {len(errors)}")
    for ex in overlap_examples[:3]:
        print(f"    overlap: {ex}")
    return res


# --------------------------------------------------------------- main ----

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--senders", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=5,
                    help="seconds of the same load before the measured run (0: none)")
    ap.add_argument("--agents", type=int, default=20)
    ap.add_argument("--hold-ms", type=int, default=500)
    ap.add_argument("--burst-senders", type=int, default=50)
    ap.add_argument("--only", choices=("latency", "agents"))
    ap.add_argument("--services", help="running services to use (DIR with services.env)")
    a = ap.parse_args()

    import psycopg
    from psycopg.conninfo import make_conninfo

    # 200 sender threads: hand the GIL over faster than every 5 ms, so the
    # LISTEN thread stamps a NOTIFY when it arrives.
    sys.setswitchinterval(0.0005)

    load = os.getloadavg()[0]
    print(f"chat: {os.cpu_count()} CPUs, load average {load:.2f} before the run"
          " (Kafka, PostgreSQL, both daemons and this client share them)")
    tmp = tempfile.mkdtemp(prefix="sluice-bench-chat-")
    svc, env = start_services(tmp, a.services)
    env.pop("SLUICE_TOPIC", None)   # the configs name their own topic

    tag = f"{uuid.uuid4().int % 10**6:06d}"
    dbname = f"sluice_bench_chat_{tag}"
    admin = env["SLUICE_POSTGRES_DSN"]
    u = urllib.parse.urlsplit(admin)
    dsn = (u._replace(path="/" + dbname).geturl() if u.scheme in ("postgresql", "postgres")
           else make_conninfo(admin, dbname=dbname))
    env["SLUICE_POSTGRES_DSN"] = dsn
    ingest = worker = None
    results = {}
    try:
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{dbname}"')
        subprocess.run([os.path.join(REPO, "deploy", "migrate.sh"), dsn], check=True)

        topic = group = f"bench-chat-{tag}"
        iport = free_port()
        iconf = os.path.join(tmp, "chat-ingest.conf")
        with open(iconf, "w") as f:
            f.write(f"listen = 127.0.0.1:{iport}\nbrokers = {env['SLUICE_KAFKA_BROKERS']}\n"
                    f"topic = {topic}\ntopics = per_kind\nschema_dir = {REPO}/schemas\n"
                    "log_level = warn\n"
                    "max_inflight = 100000\n"
                    "source.wa.kind = chat\nsource.wa.signature = none\n")
        chk = subprocess.run([os.path.join(BUILD, "sluice-ingest"), "-c", iconf, "--check-config"],
                             env=env, capture_output=True, text=True)
        if chk.returncode != 0:
            raise SystemExit("this sluice-ingest has no chat source: build it first\n"
                             + chk.stderr.strip())
        wconf = os.path.join(tmp, "chat-worker.conf")
        with open(wconf, "w") as f:
            f.write(f"brokers = {env['SLUICE_KAFKA_BROKERS']}\ntopic = {topic}\ntopics = per_kind\n"
                    f"group_id = {group}\n"
                    f"postgres_dsn = {dsn}\nredis_url = {env['SLUICE_REDIS_URL']}\n"
                    "log_level = info\n")
        wlog = os.path.join(tmp, "chat-worker.log")
        worker = daemon("sluice-worker", wconf, env, wlog)
        ingest = daemon("sluice-ingest", iconf, env, os.path.join(tmp, "chat-ingest.log"))
        wait_http(f"http://127.0.0.1:{iport}/readyz")

        if a.only in (None, "latency") and a.warmup > 0:
            # Unmeasured, the same load first: a broker started for this
            # run compiles its hot paths (JIT) under its first load, and
            # the worker's groups settle. Runs on a broker that had been
            # running for a while gave p99 26 ms; on a fresh one, after
            # this warm-up, 52-59 ms; in a full `make bench` without it,
            # 139 ms. (Since idle kinds' consumers ask their topics twice
            # a second, fresh ones give 27-35 ms, a full run 28.7 ms.)
            print(f"chat: warm-up, {a.warmup:.0f} s at {a.rate}/s from other senders, not measured")
            with contextlib.redirect_stdout(io.StringIO()):
                bench_latency(env, iport, dsn, wlog, a.rate, a.senders, a.warmup,
                              f"{(int(tag) + 1) % 10**6:06d}")
        if a.only in (None, "latency"):
            results["latency"] = bench_latency(env, iport, dsn, wlog, a.rate, a.senders,
                                               a.seconds, tag)
        if a.only in (None, "latency"):
            # Right after, on the same services: what PostgreSQL alone
            # does at the same rate, the floor of 202 -> NOTIFY.
            results["floor"] = bench_floor(dsn, a.rate, min(a.seconds, 10))
            lat = results["latency"]["latency_202_to_notify_ms"]
            fr = results["latency"]["floor_in_run"]["statement_to_notify_ms"]
            fa = results["floor"]["statement_to_notify_ms"]
            if lat["n"] and fr["n"] and fa["n"]:
                print(f"chat 202 -> NOTIFY p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms"
                      f" (goal p99 < {GOAL_P99_MS:.0f} ms: {'met' if lat['p99'] < GOAL_P99_MS else 'short'});"
                      f" floor, PostgreSQL's statement -> NOTIFY: p50 {fr['p50']:.1f} / p99"
                      f" {fr['p99']:.1f} ms beside the run, {fa['p50']:.1f} / {fa['p99']:.1f} ms alone")
        if a.only in (None, "agents"):
            results["agents"] = bench_agents(env, iport, dsn, a.agents, a.hold_ms,
                                             a.burst_senders, a.seconds, tag)
    finally:
        for p in (ingest, worker):
            if p is not None:
                stop(p)
        try:
            with psycopg.connect(admin, autocommit=True) as db:
                db.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        except Exception as e:   # noqa: BLE001 - the services may be gone already
            print(f"chat: could not drop database {dbname}: {e}", file=sys.stderr)
        end_services(tmp, svc, a.services)

    if results:
        os.makedirs(os.path.dirname(OUT), exist_ok=True)
        with open(OUT, "w") as f:
            json.dump({"seed": SEED, "seed_buffer_ms": SEED_BUFFER_MS, "goal_p99_ms": GOAL_P99_MS,
                       "cpus": os.cpu_count(),
                       "loadavg_before": load, **results}, f, indent=2)
            f.write("\n")
        print(f"chat: wrote {os.path.relpath(OUT, REPO)}")


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    main()
