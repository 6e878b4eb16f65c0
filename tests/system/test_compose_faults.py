# The composer under faults (docs/campaigns.md, "Composition by a model"):
# kill -9 and SIGTERM while messages are being composed, a replay over a
# full database, HTTPS with and without the endpoint's CA, lookups and
# composition overlapping, and a batch whose composition outlasts
# max.poll.interval.ms. The model is llmstub.py, which counts every call:
# each test asserts on the outbox rows, the run's counters and the calls
# the model received.

import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter

import llmstub
from campaign_util import (add_inbox, campaign_ingest, check_counters,
                           counters, post_batch, row_count, rows, statuses,
                           uid, wait_rows)
from compose_util import (KEY, compose_worker, leads, outbox, prompt_batch,
                          wait_done)
from harness import BUILD_DIR, wait_until

# The stub answers "Hi " + the first 40 characters of the user prompt.
TOPIC = re.compile(r"about t(\d+)$")


def topic_of(call):
    """The message index i of a call (its prompt ends "about t<i>")."""
    m = TOPIC.search(llmstub.user_text(call.body))
    assert m, call.body
    return int(m.group(1))


def calls_per_message(stub):
    return Counter(topic_of(c) for c in stub.recorded())


def part(i):
    return [f"Hi Write to Name{i} about t{i}"]


# ------------------------------------------------------------ kill -9 ----

BATCHES = 20
PER_BATCH = 50
KILLS = 3


def test_kill_9_during_composition(pipeline, services, llm):
    """kill -9 three times while batches are being composed: every message
    once and ready, the counters exact, and the calls bounded by the
    messages plus those of the batch in flight at each kill.

    batch_max = 1, so the worker's batch in flight is one record (one
    campaign batch of 50 messages) and the bound is exact: total calls
    <= 1000 + KILLS x 50; more precisely, only the messages of the batch
    that was being composed at a kill are sent twice. A run's batches share
    a Kafka key (the run id), hence one partition, consumed in order."""
    total = BATCHES * PER_BATCH
    inbox = add_inbox(services, uid("inbox-"))
    run = uid("run-kc-")
    p = f"{pipeline.prefix}L"
    leads(services, p, total)
    bodies = [prompt_batch(run, PER_BATCH, inbox, p, first=b * PER_BATCH,
                           run_total=total) for b in range(BATCHES)]
    llm.set_lognormal(median=0.15, p95=0.3, seed=15)
    crash_tuning = {"kafka__group.instance.id": f"{pipeline.group}-w",
                    "kafka__session.timeout.ms": 6000,
                    "kafka__heartbeat.interval.ms": 1000}
    worker = compose_worker(pipeline, llm, batch_max=1,
                            composer__concurrency=5, **crash_tuning)
    ingest = campaign_ingest(pipeline)

    errors = []

    def send():
        try:
            for i, body in enumerate(bodies):
                post_batch(ingest, body)
                if i % 4 == 1:      # a retrying sender: no call for it
                    post_batch(ingest, body)
                time.sleep(0.05)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()

    rnd = random.Random(0x15)
    kills = []                  # (rows committed, calls so far)
    for k, at in enumerate((150, 400, 650)[:KILLS]):
        wait_until(lambda: (worker.assert_alive(),
                            row_count(services, run) >= at)[1],
                   120, 0.02, f"{at} rows before kill {k + 1}",
                   describe=lambda: worker.log_tail(20))
        # Into the next batch's composition: some of its calls made.
        want = llm.total() + rnd.randint(5, 30)
        wait_until(lambda: llm.total() >= want, 60,
                   0.01, f"calls of the batch after row {at}")
        worker.kill9()
        kills.append((row_count(services, run), llm.total()))
        pipeline.restart(worker)

    sender.join(60)
    assert not sender.is_alive() and not errors, errors
    assert kills[-1][0] < total, f"the last kill came after the end: {kills}"
    wait_rows(services, run, total, timeout=240, worker=worker)
    pipeline.wait_caught_up(timeout=60)
    print(f"kills (rows, calls): {kills}")

    got = rows(services, run)
    assert len(got) == total
    wrong = {m: (r["status"], r["error"], r["parts"])
             for m, r in got.items()
             if (r["status"], r["error"], r["parts"]) !=
             ("ready", None, part(int(m.rsplit("-m", 1)[1])))}
    assert not wrong, f"{len(wrong)} wrong: {sorted(wrong.items())[:5]}"
    assert set(got) == {f"{run}-m{i}" for i in range(total)}
    assert counters(services, run) == {
        "total": total, "processed": total, "failed": 0, "paused": 0,
        "expired": 0, "status": "finished"}
    check_counters(services, [run])

    snap = llm.snapshot()
    assert snap["errors"] == [], snap["errors"][:5]
    per = calls_per_message(llm)
    assert set(per) == set(range(total)), "a message never composed"
    twice = {i for i, n in per.items() if n > 1}
    # The batches whose messages were sent again: only those in flight
    # at a kill (rows committed at the kill // 50: the next one).
    in_flight = {r // PER_BATCH for r, _ in kills}
    again = {i // PER_BATCH for i in twice}
    assert again <= in_flight, (again, in_flight, kills)
    assert max(per.values()) <= 1 + KILLS, per.most_common(3)
    assert snap["total"] <= total + KILLS * PER_BATCH, (snap["total"], kills)
    assert snap["total"] == sum(per.values())
    print(f"calls: {snap['total']} for {total} messages, "
          f"{len(twice)} sent twice, of batches {sorted(again)}")


# ------------------------------------------------------------- replay ----

def replay(pipeline, dsn, group, *extra):
    """`sluice-worker replay` of the whole topic into `dsn`, with the live
    worker's settings (its composer included) and a group of its own."""
    s = dict(pipeline.last_worker_settings)
    s["postgres_dsn"] = dsn
    s.pop("listen", None)
    cfg = pipeline._write(f"replay-{group[-6:]}.conf", s)
    r = subprocess.run([str(BUILD_DIR / "sluice-worker"), "replay", "-c",
                        str(cfg), "--from", "1970-01-01T00:00:00Z",
                        "--group", group, *extra],
                       stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=180, env=pipeline.env)
    for marker in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
        assert marker not in r.stderr, r.stderr[-4000:]
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def run_fields(services, run):
    """The run's row but updated_at (the run row is upserted with every
    batch, changed or not: bookkeeping, as docs/replay.md says)."""
    return services.query(
        "SELECT id, campaign_id, workspace_id, inbox_id, end_time, total,"
        " processed, failed, paused, expired, status, finished_at,"
        " created_at FROM campaign_runs WHERE id = %s", (run,))


def full_rows(services, run):
    return sorted(services.query(
        "SELECT * FROM campaign_messages WHERE run_id = %s", (run,)))


def test_replay_over_a_full_database_makes_no_call(pipeline, services, llm):
    ingest = campaign_ingest(pipeline)
    worker = compose_worker(pipeline, llm)
    inbox = add_inbox(services, uid("inbox-"))
    p = f"{pipeline.prefix}L"
    leads(services, p, 25)
    llm.set_latency(0.05)
    run = uid("run-")
    post_batch(ingest, prompt_batch(run, 10, inbox, p, run_total=20))
    post_batch(ingest, prompt_batch(run, 10, inbox, p, first=10,
                                    run_total=20))
    wait_done(services, run, 20, worker=worker)
    pipeline.wait_caught_up()
    assert llm.total() == 20
    before = full_rows(services, run)
    run_before = run_fields(services, run)
    assert len(before) == 20
    assert set(statuses(services, run).values()) == {("ready", None)}

    llm.reset()
    r = replay(pipeline, services.worker_dsn, f"{pipeline.group}-again")
    m = re.search(r"replay done: (\d+) records in \d+ batches, (\d+) rows "
                  r"saved", r.stderr)
    assert m and int(m.group(1)) >= 2 and m.group(2) == "0", r.stderr[-2000:]
    assert llm.total() == 0, [c.body for c in llm.recorded()][:3]
    # Not an outbox row touched (updated_at included), the run's
    # counters and finish time unchanged.
    assert full_rows(services, run) == before
    assert run_fields(services, run) == run_before

    # The control: the replay's composer is live. A batch the database
    # does not hold yet (the live worker stopped before it) is composed
    # by the replay, and only it.
    assert worker.stop() == 0
    run2 = uid("run-")
    post_batch(ingest, prompt_batch(run2, 5, inbox, p, first=20))
    # A preview (--dry-run) of it pays for no call either.
    r = replay(pipeline, services.worker_dsn, f"{pipeline.group}-preview",
               "--dry-run")
    assert llm.total() == 0, [c.body for c in llm.recorded()][:3]
    # The preview: run2's five messages would be saved, counted as failed
    # (not_composed:dry_run), none ready, and no call made.
    assert re.search(r"dry run \(rolled back\): batch .* 0 ready \d+ failed",
                     r.stderr), r.stderr[-2000:]
    assert re.search(r"replay done: .* 5 rows would be saved", r.stderr), \
        r.stderr[-2000:]
    assert outbox(services, run2) == {}
    replay(pipeline, services.worker_dsn, f"{pipeline.group}-control")
    assert calls_per_message(llm) == Counter(range(20, 25))
    assert {m: v[:3] for m, v in outbox(services, run2).items()} == {
        f"{run2}-m{i}": ("ready", part(i), None) for i in range(20, 25)}
    assert full_rows(services, run) == before
    check_counters(services, [run, run2])


# ------------------------------------------------------------ SIGTERM ----

def test_sigterm_during_composition(pipeline, services, llm):
    """SIGTERM while a batch of 30 is composed (2 s a call, K = 2, about
    30 s of work): the worker does not wait for the composition, exits 0
    well within its grace period and writes nothing of the batch (the
    documented choice: the batch is left to its next owner, never half
    written). Restarted, it composes the batch again, and only it."""
    ingest = campaign_ingest(pipeline)
    worker = compose_worker(pipeline, llm, composer__concurrency=2)
    inbox = add_inbox(services, uid("inbox-"))
    p = f"{pipeline.prefix}L"
    leads(services, p, 40)
    # A batch committed before: never composed again.
    done = uid("run-done-")
    llm.set_latency(0.05)
    post_batch(ingest, prompt_batch(done, 10, inbox, p, first=30))
    wait_done(services, done, 10, worker=worker)
    done_rows = full_rows(services, done)

    llm.reset()
    llm.set_latency(2.0)
    run = uid("run-")
    post_batch(ingest, prompt_batch(run, 30, inbox, p))
    # Two waves started: two calls answered, two in flight.
    wait_until(lambda: llm.total() >= 4, 60, 0.05, "4 calls of the batch")
    t0 = time.monotonic()
    worker.signal(signal.SIGTERM)
    rc = worker.wait(timeout=60)
    took = time.monotonic() - t0
    assert rc == 0, worker.log_tail()
    # The calls in flight take at most 2 s; the ~26 s left are not waited
    # for (systemd's TimeoutStopSec is 90).
    assert took < 15, took
    composed_before = calls_per_message(llm)
    assert sum(composed_before.values()) < 30, composed_before
    assert statuses(services, run) == {}
    assert counters(services, run) is None
    assert re.search(r"stopping", worker.log_text(since_start=True)), \
        worker.log_tail()

    llm.reset()
    llm.set_latency(0.1)
    pipeline.restart(worker)
    wait_done(services, run, 30, worker=worker)
    assert {m: v[:3] for m, v in outbox(services, run).items()} == {
        f"{run}-m{i}": ("ready", part(i), None) for i in range(30)}
    assert counters(services, run) == {
        "total": 30, "processed": 30, "failed": 0, "paused": 0,
        "expired": 0, "status": "finished"}
    # After the restart: each message of that batch once, nothing else.
    assert calls_per_message(llm) == Counter(range(30))
    assert full_rows(services, done) == done_rows
    check_counters(services, [run, done])


# -------------------------------------------------------------- HTTPS ----

def test_https_with_and_without_the_ca(pipeline, services, tmp_path):
    cert, key = llmstub.make_cert(tmp_path)
    stub = llmstub.LLMStub(certfile=cert, keyfile=key, api_key=KEY).start()
    try:
        ingest = campaign_ingest(pipeline)
        worker = compose_worker(pipeline, stub, http__ca_file=cert)
        inbox = add_inbox(services, uid("inbox-"))
        p = f"{pipeline.prefix}L"
        leads(services, p, 6)
        run = uid("run-")
        post_batch(ingest, prompt_batch(run, 3, inbox, p))
        wait_done(services, run, 3, worker=worker)
        assert {m: v[:3] for m, v in outbox(services, run).items()} == {
            f"{run}-m{i}": ("ready", part(i), None) for i in range(3)}
        assert stub.total() == 3 and stub.snapshot()["errors"] == []
        assert stub.base_url.startswith("https://")
        assert worker.stop() == 0

        # The system's trust store does not hold the stub's CA: the
        # handshake fails, no request reaches the model, and after the
        # retries the messages fail as a connection error would. The
        # reason is a warning at info (at most one per 10 s), never the
        # prompt or the key.
        stub.reset()
        worker = compose_worker(pipeline, stub, composer__retries=1)
        run2 = uid("run-")
        post_batch(ingest, prompt_batch(run2, 3, inbox, p, first=3))
        wait_done(services, run2, 3, worker=worker)
        assert statuses(services, run2) == {
            f"{run2}-m{i}": ("failed", "compose_failed:connect")
            for i in range(3, 6)}
        snap = stub.snapshot()
        assert snap["total"] == 0, snap
        assert snap["connections"] >= 2, snap     # the retries tried
        check_counters(services, [run, run2])
        log = worker.log_text(since_start=True)
        warns = re.findall(r"warn: composer: call to https://127\.0\.0\.1:"
                           r"\d+/v1/chat/completions failed: tls: "
                           r"certificate verify failed for 127\.0\.0\.1: "
                           r"self.signed", log)
        # 6 failed calls within a second or two: one warning.
        assert len(warns) == 1, worker.log_tail(30)
        assert KEY not in worker.log_text()
        assert "Write to" not in log and "Name3" not in log
    finally:
        stub.stop()


# ------------------------------------------------------------ overlap ----

def test_lookups_and_composition_overlap(pipeline, services, llm, leadstub):
    """One lead's lookup takes 3 s, the others answer at once (K = 5, 10
    messages, 2 s a call): the other messages' calls start before the
    slow lookup is answered, and the batch ends one model latency after
    it (about 3 + 2 = 5 s), not two waves after it (3 + 2 x 2 = 7 s)."""
    lat, slow_s = 2.0, 3.0
    p = f"{pipeline.prefix}L"
    for i in range(10):
        leadstub.set(f"{p}{i}", {"lead": {"name": f"Name{i}"}})
    slow = f"{p}0"
    leadstub.set_delay(slow, slow_s)
    # When each lookup was asked and answered, on the clock of Call.t_start.
    asked, answered = {}, {}
    begin, end = leadstub._begin, leadstub._end

    def _begin(lead, raw):
        asked.setdefault(lead, time.monotonic())
        return begin(lead, raw)

    def _end(lead):
        answered[lead] = time.monotonic()
        end(lead)
    leadstub._begin, leadstub._end = _begin, _end

    ingest = campaign_ingest(pipeline)
    worker = compose_worker(pipeline, llm, composer__concurrency=5,
                            lead_context__source="http",
                            lead_context__url=leadstub.url)
    inbox = add_inbox(services, uid("inbox-"))
    llm.set_latency(lat)
    run = uid("run-")
    post_batch(ingest, prompt_batch(run, 10, inbox, p))
    wait_done(services, run, 10, worker=worker)
    assert {m: v[:3] for m, v in outbox(services, run).items()} == {
        f"{run}-m{i}": ("ready", part(i), None) for i in range(10)}
    calls = {topic_of(c): c for c in llm.recorded()}
    assert sorted(calls) == list(range(10)) and llm.total() == 10

    t_slow = answered[slow]
    early = {i: round(t_slow - c.t_start, 2) for i, c in calls.items()
             if i != 0}
    # Every other message's call started before the slow lookup answered
    # (the second wave at about 2 s, the slow answer at 3 s).
    assert all(d > 0 for d in early.values()), early
    # The slow lead's call started as soon as its context was there ...
    assert 0 <= calls[0].t_start - t_slow < 1.0, calls[0].t_start - t_slow
    # ... and the batch's calls ended one model latency after it.
    last = max(c.t_end for c in calls.values())
    span = last - min(asked.values())
    assert span < slow_s + lat + 1.0, (span, early)
    check_counters(services, [run])


# ---------------------------------------------------------- long batch ---

def test_long_composition_keeps_the_partitions(pipeline, services, llm):
    """A batch composed for ~12 s (12 messages, 1 s a call, K = 1) with
    max.poll.interval.ms at 7 s: the consumer keeps serving librdkafka
    while the calls run, so the worker never leaves the group, the batch
    commits once and no message is composed twice."""
    ingest = campaign_ingest(pipeline)
    worker = compose_worker(pipeline, llm, composer__concurrency=1,
                            kafka__session__timeout__ms=6000,
                            kafka__heartbeat__interval__ms=1000,
                            kafka__max__poll__interval__ms=7000)
    inbox = add_inbox(services, uid("inbox-"))
    p = f"{pipeline.prefix}L"
    leads(services, p, 12)
    llm.set_latency(1.0)
    run = uid("run-")
    t0 = time.monotonic()
    post_batch(ingest, prompt_batch(run, 12, inbox, p))
    wait_done(services, run, 12, timeout=90, worker=worker)
    took = time.monotonic() - t0
    assert took > 9, f"the batch took {took:.1f} s: not longer than the " \
                     "poll interval, the test proves nothing"
    pipeline.wait_caught_up()
    assert {m: v[:3] for m, v in outbox(services, run).items()} == {
        f"{run}-m{i}": ("ready", part(i), None) for i in range(12)}
    assert counters(services, run) == {
        "total": 12, "processed": 12, "failed": 0, "paused": 0,
        "expired": 0, "status": "finished"}
    assert calls_per_message(llm) == Counter(range(12))
    check_counters(services, [run])
    # A few more seconds: a late eviction would show now.
    time.sleep(3)
    log = worker.log_text(since_start=True)
    assert not re.search(r"maximum poll interval|MAX_POLL", log, re.I), \
        "\n".join(line for line in log.splitlines()
                  if re.search(r"poll|revoked|assigned", line, re.I))
    assert "revoked" not in log, worker.log_tail(30)
