# The fleet: several workers in one consumer group.
#
# - test_fleet_under_churn: three workers on six partitions join, stop
#   (SIGTERM) and die (kill -9 at random moments) under load; at the end the
#   rows are exactly the acknowledged events, none twice, and the offsets in
#   sluice_offsets never moved backwards (a trigger records any decrease).
# - test_restart_to_first_commit: how long a restarted worker takes to
#   commit again, with and without static membership, after kill -9 and
#   after SIGTERM; and how long a stopped worker's partitions wait for
#   another member. Prints the figures.
# - test_zombie_is_fenced: a worker stopped (SIGSTOP) inside its batch's
#   transaction past the session timeout; the others take its partitions
#   and go on; resumed, its commit fails, its retry finds every record
#   already applied, nothing is written twice and it rejoins.

import os
import random
import re
import signal
import threading
import time
import uuid

import psycopg
from psycopg import sql

from harness import (Client, WorkerDaemon, transcript, wait_until)

SESSION_MS = 6000
# The fleet applies transcripts only (kinds = transcript, as a fleet that
# runs a worker per kind does): one pipeline per worker, the consumer group
# <group>.transcript, whose rebalances and offsets these tests follow.
GROUP_TUNING = {"kafka__session.timeout.ms": SESSION_MS,
                "kafka__heartbeat.interval.ms": 1000,
                "kinds": "transcript"}


def kg(group):
    """The consumer group (and sluice_offsets key) of the transcript
    pipeline of workers configured with group_id = group."""
    return f"{group}.transcript"


# ---------------------------------------------------------------- helpers

def start_worker_as(pipeline, appname, wait=True, **over):
    """pipeline.start_worker, with PGAPPNAME set so the worker's PostgreSQL
    sessions can be told apart in pg_stat_activity."""
    s = pipeline.worker_settings(**over)
    i = len([d for d in pipeline.daemons if d.kind == "worker"])
    cfg = pipeline._write(f"worker{i}.conf", s)
    d = WorkerDaemon(cfg, pipeline.tmp / f"worker{i}.log",
                     dict(pipeline.env, PGAPPNAME=appname))
    d.appname = appname
    pipeline.daemons.append(d)
    pipeline.worker = d
    return d.start(wait=wait)


def ddl(services, stmt, attempts=20):
    """A DDL statement on a table every worker writes (shared with other
    tests): with a short lock_timeout, retried, so that waiting for the
    table lock never queues everyone else's writes behind it for long."""
    for attempt in range(attempts):
        try:
            with psycopg.connect(services.pg_dsn, autocommit=True,
                                 connect_timeout=10) as conn:
                conn.execute("SET lock_timeout = '500ms'")
                conn.execute(stmt)
                return
        except psycopg.errors.LockNotAvailable:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)


class OffsetWatch:
    """A trigger on sluice_offsets that records, into a table of its own,
    every update of this group's rows where next_offset decreases."""

    def __init__(self, services, group):
        self.services = services
        self.group = group
        sfx = uuid.uuid4().hex[:10]
        self.table = sql.Identifier(f"fleet_backwards_{sfx}")
        self.fn = sql.Identifier(f"fleet_backwards_{sfx}")
        self.trigger = sql.Identifier(f"fleet_backwards_{sfx}")

    def _exec(self, stmt):
        ddl(self.services, stmt)

    def __enter__(self):
        self._exec(sql.SQL(
            "CREATE TABLE {t} (partition int, old_offset bigint,"
            " new_offset bigint, at timestamptz DEFAULT now())"
        ).format(t=self.table))
        self._exec(sql.SQL(
            "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN INSERT INTO {t} (partition, old_offset, new_offset)"
            " VALUES (NEW.partition, OLD.next_offset, NEW.next_offset);"
            " RETURN NEW; END $$").format(f=self.fn, t=self.table))
        self._exec(sql.SQL(
            "CREATE TRIGGER {tr} AFTER UPDATE ON sluice_offsets FOR EACH ROW"
            " WHEN (OLD.group_id = {g} AND NEW.next_offset < OLD.next_offset)"
            " EXECUTE FUNCTION {f}()").format(
                tr=self.trigger, g=sql.Literal(self.group), f=self.fn))
        self._self_check()
        return self

    def _self_check(self):
        """The watch can fail: a decrease made by hand is recorded."""
        q = self.services.query
        q("INSERT INTO sluice_offsets (group_id, topic, partition,"
          " next_offset) VALUES (%s, 'fleet-self-check', 0, 10)",
          (self.group,))
        q("UPDATE sluice_offsets SET next_offset = 5 WHERE group_id = %s"
          " AND topic = 'fleet-self-check'", (self.group,))
        q("DELETE FROM sluice_offsets WHERE group_id = %s"
          " AND topic = 'fleet-self-check'", (self.group,))
        got = self.backwards()
        assert got == [(0, 10, 5)], f"the offset watch does not work: {got}"
        self._exec(sql.SQL("TRUNCATE {t}").format(t=self.table))

    def backwards(self):
        with psycopg.connect(self.services.pg_dsn, autocommit=True,
                             connect_timeout=10) as conn:
            return conn.execute(sql.SQL(
                "SELECT partition, old_offset, new_offset FROM {t}"
                " ORDER BY at").format(t=self.table)).fetchall()

    def __exit__(self, *exc):
        self._exec(sql.SQL("DROP TRIGGER IF EXISTS {tr} ON sluice_offsets")
                   .format(tr=self.trigger))
        self._exec(sql.SQL("DROP FUNCTION IF EXISTS {f}()").format(f=self.fn))
        self._exec(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=self.table))


class Load:
    """Webhooks from a few threads at a bounded rate until stopped: one
    transcript entry (with an id) per conversation, every 10th sent twice
    as a retrying sender would. Counts the distinct ones acknowledged."""

    def __init__(self, pipeline, port, rate=150.0, threads=3, tag="l"):
        self.pipeline = pipeline
        self.port = port
        self.interval = threads / rate
        self.n_threads = threads
        self.tag = tag
        self.accepted = set()
        self.errors = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = []

    def _send(self, t):
        client = Client(self.port)
        n = 0
        next_at = time.monotonic()
        try:
            while not self.stopping.is_set():
                cid = f"{self.pipeline.prefix}{self.tag}{t}-{n}"
                body = transcript(cid, [(f"{cid}-m", "user", f"hello {n}")])
                for _ in range(1 + (n % 10 == 0)):
                    r = None
                    for _attempt in range(10):
                        r = client.post(body, retries=3)
                        if r.status != 503:
                            break
                        time.sleep(0.2)
                    with self.lock:
                        if r.status == 202:
                            self.accepted.add(cid)
                        else:
                            self.errors.append((cid, r))
                n += 1
                next_at += self.interval
                time.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            client.close()

    def start(self):
        for t in range(self.n_threads):
            th = threading.Thread(target=self._send, args=(t,), daemon=True)
            th.start()
            self.threads.append(th)
        return self

    def stop(self):
        self.stopping.set()
        for th in self.threads:
            th.join(60)
        assert not any(th.is_alive() for th in self.threads), "senders stuck"
        assert not self.errors, (f"{len(self.errors)} webhooks not accepted,"
                                 f" e.g. {self.errors[:3]}")
        return len(self.accepted)


def offsets_sum(pipeline, group):
    return pipeline.services.scalar(
        "SELECT coalesce(sum(next_offset), 0) FROM sluice_offsets"
        " WHERE group_id = %s AND topic = %s", (kg(group), pipeline.topic))


def wait_all_committed(pipeline, group, timeout=90.0):
    """Every record in the topic is committed by `group`."""
    def done():
        marks = pipeline.services.watermarks(pipeline.topic)
        got = dict(pipeline.services.query(
            "SELECT partition, next_offset FROM sluice_offsets"
            " WHERE group_id = %s AND topic = %s", (kg(group), pipeline.topic)))
        return all(got.get(p, 0) >= hi for p, (lo, hi) in marks.items()
                   if hi > lo)
    wait_until(done, timeout, 0.2,
               f"group {group} to commit up to the high watermarks")


def wait_rows(pipeline, expected, timeout=90.0):
    wait_until(lambda: pipeline.message_count() >= expected, timeout, 0.2,
               f"{expected} messages in PostgreSQL",
               describe=lambda: f"{pipeline.message_count()} messages")


def wait_more_rows(pipeline, n, timeout=60.0):
    start = pipeline.message_count()
    wait_until(lambda: pipeline.message_count() >= start + n, timeout, 0.1,
               f"{n} more messages committed")


def assigned_partitions(daemon, since=0):
    """The partitions the worker holds now, by its log's "assigned T [p]"
    and "revoked N partitions: [p] [q]" lines from byte `since` on."""
    held = set()
    text = daemon.log.read_bytes()[since:].decode("utf-8", "replace")
    for line in text.splitlines():
        m = re.search(r"assigned \S+ \[(\d+)\]", line)
        if m:
            held.add(int(m.group(1)))
            continue
        m = re.search(r"revoked \d+ partitions[^:]*:(.*)", line)
        if m:
            held -= {int(p) for p in re.findall(r"\[(\d+)\]", m.group(1))}
    return held


# ---------------------------------------------------------------- churn

def test_fleet_under_churn(pipeline, services):
    seed = int(os.environ.get("SLUICE_FLEET_SEED", time.time_ns() % 10**6))
    rnd = random.Random(seed)
    over = dict(topic_partitions=6, batch_max=100, **GROUP_TUNING)
    kills, stops, joins = [], [], []
    t0 = time.monotonic()

    def at():
        return round(time.monotonic() - t0, 1)

    with OffsetWatch(services, kg(pipeline.group)) as watch:
        workers = [pipeline.start_worker(**over)]
        joins.append((at(), 0))
        ingest = pipeline.start_ingest(topic_partitions=6)
        load = Load(pipeline, ingest.port).start()
        try:
            # Two more join under load, one static.
            wait_more_rows(pipeline, 100)
            workers.append(pipeline.start_worker(**over))
            joins.append((at(), 1))
            wait_more_rows(pipeline, 100)
            workers.append(pipeline.start_worker(
                group_instance_id=f"{pipeline.group}-w2", **over))
            joins.append((at(), 2))
            # One stops (drains and leaves) and comes back.
            wait_more_rows(pipeline, 150)
            assert workers[1].stop() == 0, workers[1].log_tail()
            stops.append((at(), 1))
            wait_more_rows(pipeline, 100)
            pipeline.restart(workers[1])
            # kill -9 at random moments, any of the three, each restarted.
            for _ in range(4):
                wait_more_rows(pipeline, rnd.randint(30, 200))
                time.sleep(rnd.uniform(0, 0.3))
                w = rnd.randrange(3)
                workers[w].kill9()
                kills.append((at(), w, pipeline.message_count()))
                time.sleep(rnd.uniform(0, 2.0))
                pipeline.restart(workers[w], wait=rnd.random() < 0.5)
            wait_more_rows(pipeline, 100)
        finally:
            acked = load.stop()
        wait_rows(pipeline, acked)
        wait_all_committed(pipeline, pipeline.group)
        for w in workers:
            w.assert_alive()
        rows = pipeline.message_count()
        dups = pipeline.duplicates()
        backwards = watch.backwards()
        skipped = sum(w.batch_totals()[1] for w in workers)
        print(f"\nfleet (seed {seed}): acknowledged {acked}, rows {rows}, "
              f"duplicates {len(dups)}, duplicate entries skipped "
              f"{skipped}, joins {joins}, stops {stops}, kills (s, worker, "
              f"rows then) {kills}, offsets moved back {len(backwards)}, "
              f"{at()} s")
        assert not dups, f"duplicated (conversation, external id): {dups}"
        assert rows == acked, f"{rows} rows for {acked} acknowledged events"
        assert not backwards, f"offsets moved backwards: {backwards[:10]}"
        assert len(kills) == 4


# ---------------------------------------------------------------- restarts

def test_restart_to_first_commit(pipeline, services):
    """Restart-to-first-commit: from starting a worker that was killed or
    stopped to its first batch committed in sluice_offsets, one worker in
    its group so every commit is its own."""
    runs = int(os.environ.get("SLUICE_FLEET_RUNS", "2"))
    ingest = pipeline.start_ingest(topic_partitions=6)
    load = Load(pipeline, ingest.port, rate=40, threads=2, tag="r").start()
    figures = {}
    try:
        for static in (False, True):
            group = f"{pipeline.group}_{'s' if static else 'd'}"
            over = dict(topic_partitions=6, group_id=group, **GROUP_TUNING)
            if static:
                over["group_instance_id"] = f"{group}-0"
            w = pipeline.start_worker(**over)
            for how in ("kill -9", "SIGTERM"):
                for _ in range(runs):
                    before = offsets_sum(pipeline, group)
                    wait_until(lambda: offsets_sum(pipeline, group) > before,
                               30, 0.05, f"{group} committing")
                    if how == "kill -9":
                        w.kill9()
                    else:
                        assert w.stop() == 0, w.log_tail()
                    time.sleep(0.5)     # records arrive while it is down
                    stopped_at = offsets_sum(pipeline, group)
                    t = time.monotonic()
                    pipeline.restart(w, wait=False)
                    wait_until(
                        lambda: offsets_sum(pipeline, group) > stopped_at,
                        SESSION_MS / 1000 * 3 + 30, 0.02,
                        f"the restarted worker ({how}, static={static}) to "
                        "commit", describe=w.log_tail)
                    figures.setdefault(
                        ("static" if static else "dynamic", how),
                        []).append(round(time.monotonic() - t, 2))
            assert w.stop() == 0, w.log_tail()
        # A planned stop without restart: how long until another member
        # commits on the stopped one's partitions.
        handover = {}
        for static in (False, True):
            group = f"{pipeline.group}_h{'s' if static else 'd'}"
            over = dict(topic_partitions=6, group_id=group, **GROUP_TUNING)
            a = pipeline.start_worker(
                group_instance_id=f"{group}-a" if static else None, **over)
            b = pipeline.start_worker(
                group_instance_id=f"{group}-b" if static else None, **over)

            def split():
                pa, pb = assigned_partitions(a), assigned_partitions(b)
                return pa and pb and not (pa & pb) and len(pa | pb) == 6
            wait_until(split, 60, 0.2, "two members sharing six partitions")
            wait_all_committed(pipeline, group)
            mine = sorted(assigned_partitions(a))
            assert a.stop() == 0, a.log_tail()
            t = time.monotonic()
            left = dict(services.query(
                "SELECT partition, next_offset FROM sluice_offsets WHERE"
                " group_id = %s AND topic = %s AND partition = ANY(%s)",
                (kg(group), pipeline.topic, mine)))

            def moved():
                now = dict(services.query(
                    "SELECT partition, next_offset FROM sluice_offsets WHERE"
                    " group_id = %s AND topic = %s AND partition = ANY(%s)",
                    (kg(group), pipeline.topic, mine)))
                return any(now.get(p, -1) > left.get(p, -1) for p in mine)
            wait_until(moved, SESSION_MS / 1000 * 3 + 30, 0.05,
                       f"another member to commit on {mine}")
            handover["static" if static else "dynamic"] = round(
                time.monotonic() - t, 2)
            assert b.stop() == 0, b.log_tail()
    finally:
        load.stop()
    print(f"\nrestart to first commit (s, session.timeout.ms={SESSION_MS}):")
    for (mode, how), xs in sorted(figures.items()):
        print(f"  {mode:8} after {how:8}: {xs}")
    print("SIGTERM without restart, until another member commits on the "
          f"stopped one's partitions (s): {handover}")
    session_s = SESSION_MS / 1000
    for how in ("kill -9", "SIGTERM"):
        assert max(figures[("static", how)]) < session_s / 2, (
            f"static membership after {how} took "
            f"{figures[('static', how)]} s (session {session_s} s)")
    # What static membership costs: a stopped static member keeps its
    # partitions, idle, until its session times out (no LeaveGroup).
    assert handover["dynamic"] < session_s / 2, handover
    assert handover["static"] > session_s / 2, handover


# ---------------------------------------------------------------- zombie

class SlowInsert:
    """A trigger on messages that sleeps `sleep_s` in the first insert of
    conversation `cid` (a sequence, not rolled back, makes it once), so the
    worker writing it sits inside its batch's transaction."""

    def __init__(self, services, cid, sleep_s):
        self.services = services
        sfx = uuid.uuid4().hex[:10]
        self.seq_name = f"fleet_slow_{sfx}"
        self.seq = sql.Identifier(self.seq_name)
        self.fn = sql.Identifier(f"fleet_slow_{sfx}")
        self.trigger = sql.Identifier(f"fleet_slow_{sfx}")
        self.cid = cid
        self.sleep_s = sleep_s

    def _exec(self, stmt):
        ddl(self.services, stmt)

    def __enter__(self):
        self._exec(sql.SQL("CREATE SEQUENCE {s}").format(s=self.seq))
        self._exec(sql.SQL(
            "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $$"
            " BEGIN IF nextval({s}) = 1 THEN PERFORM pg_sleep({n}); END IF;"
            " RETURN NEW; END $$").format(
                f=self.fn, s=sql.Literal(self.seq_name),
                n=sql.Literal(self.sleep_s)))
        self._exec(sql.SQL(
            "CREATE TRIGGER {tr} BEFORE INSERT ON messages FOR EACH ROW"
            " WHEN (NEW.conversation_id = {c}) EXECUTE FUNCTION {f}()")
            .format(tr=self.trigger, c=sql.Literal(self.cid), f=self.fn))
        return self

    def __exit__(self, *exc):
        self._exec(sql.SQL("DROP TRIGGER IF EXISTS {tr} ON messages")
                   .format(tr=self.trigger))
        self._exec(sql.SQL("DROP FUNCTION IF EXISTS {f}()").format(f=self.fn))
        self._exec(sql.SQL("DROP SEQUENCE IF EXISTS {s}").format(s=self.seq))


def test_zombie_is_fenced(pipeline, services):
    over = dict(topic_partitions=6, batch_max=50,
                postgres_idle_tx_timeout_ms=2000, **GROUP_TUNING)
    slow_cid = pipeline.cid("slow")
    tag = uuid.uuid4().hex[:8]     # application_name keeps 63 bytes
    names = [f"sluice-fleet-{tag}-a", f"sluice-fleet-{tag}-b"]
    with OffsetWatch(services, kg(pipeline.group)) as watch, \
            SlowInsert(services, slow_cid, 3):
        workers = [start_worker_as(pipeline, n, **over) for n in names]
        ingest = pipeline.start_ingest(topic_partitions=6)
        wait_until(lambda: all(assigned_partitions(w) for w in workers), 60,
                   0.2, "both workers to hold partitions")
        load = Load(pipeline, ingest.port, rate=30, threads=2, tag="z")
        load.start()
        zombie = None
        try:
            wait_more_rows(pipeline, 30)
            r = ingest.post(transcript(slow_cid,
                                       [(f"{slow_cid}-m", "user", "slow")]))
            assert r.status == 202, r

            def sleeping():
                rows = services.query(
                    "SELECT application_name FROM pg_stat_activity"
                    " WHERE wait_event = 'PgSleep'"
                    " AND application_name = ANY(%s)", (names,))
                return rows[0][0] if rows else None
            name = wait_until(sleeping, 30, 0.02,
                              "a worker to sit in the slow insert")
            zombie = workers[names.index(name)]
            other = workers[1 - names.index(name)]
            zombie.signal(signal.SIGSTOP)
            stopped_at = zombie.log.stat().st_size
            t_stop = time.monotonic()
            held = assigned_partitions(zombie)
            # The others take its partitions once its session times out,
            # and the server ends its idle transaction, so they are not
            # blocked behind its locks: the slow record is committed by
            # the other worker while the zombie is still stopped.
            wait_until(lambda: pipeline.message_count(slow_cid) == 1,
                       SESSION_MS / 1000 * 3 + 20, 0.1,
                       "the other worker to commit the zombie's records",
                       describe=other.log_tail)
            took_over = round(time.monotonic() - t_stop, 1)
            assert held <= assigned_partitions(other), (
                held, assigned_partitions(other))
            wait_more_rows(pipeline, 20)
            assert not services.query(
                "SELECT 1 FROM pg_stat_activity WHERE application_name = %s"
                " AND state LIKE 'idle in transaction%%'", (name,)), (
                "the zombie's transaction is still open")
            zombie.signal(signal.SIGCONT)
            resumed_at = zombie.log.stat().st_size

            def rejoined_and_working():
                text = zombie.log.read_bytes()[resumed_at:].decode(
                    "utf-8", "replace")
                i = text.find("assigned ")
                return i >= 0 and re.search(r"saved [1-9]\d* messages",
                                            text[i:])
            wait_until(rejoined_and_working, 60, 0.2,
                       "the zombie to rejoin and save later records",
                       describe=zombie.log_tail)
        finally:
            if zombie is not None:
                zombie.signal(signal.SIGCONT)
            acked = load.stop()
        acked += 1                      # the slow one
        wait_rows(pipeline, acked)
        wait_all_committed(pipeline, pipeline.group)
        text = zombie.log.read_bytes()[stopped_at:].decode("utf-8", "replace")
        # Its batch in hand: the commit failed (the server had ended the
        # transaction), the retry found every record applied by the other.
        failed = re.search(r"batch of (\d+) records not committed: (.*)",
                           text)
        assert failed, f"no failed commit in the zombie's log:\n{text[:3000]}"
        n = int(failed.group(1))
        fenced = re.search(r"batch of (\d+) records in \d+ ms [^\n]*? "
                           r"(\d+) already applied", text[failed.end():])
        assert fenced and fenced.group(1) == fenced.group(2) == str(n), (
            f"the zombie's retry of its {n} records was not fenced:\n"
            f"{text[:4000]}")
        rows = pipeline.message_count()
        dups = pipeline.duplicates()
        backwards = watch.backwards()
        print(f"\nzombie: stopped in its transaction with {n} records, "
              f"partitions {sorted(held)} taken over, slow record committed "
              f"by the other {took_over} s after SIGSTOP; commit refused: "
              f"{failed.group(2)[:120]!r}; retry: {n} already applied; "
              f"acknowledged {acked}, rows {rows}, duplicates {len(dups)}, "
              f"offsets moved back {len(backwards)}")
        assert not dups, f"duplicated (conversation, external id): {dups}"
        assert rows == acked, f"{rows} rows for {acked} acknowledged events"
        assert not backwards, f"offsets moved backwards: {backwards}"


def test_zombie_without_idle_timeout_blocks_its_successor(pipeline,
                                                          services):
    """postgres_idle_tx_timeout_ms = 0: the stopped worker's transaction
    keeps the offset rows locked, so the partitions' next owner waits on
    them as long as it is stopped (no data lost or doubled, but no
    progress either); resumed, the zombie commits (it held the fence) and
    the next owner's fence skips what it wrote."""
    over = dict(topic_partitions=6, batch_max=50,
                postgres_idle_tx_timeout_ms=0, **GROUP_TUNING)
    slow_cid = pipeline.cid("slow")
    tag = uuid.uuid4().hex[:8]     # application_name keeps 63 bytes
    names = [f"sluice-fleet-{tag}-a", f"sluice-fleet-{tag}-b"]
    with OffsetWatch(services, kg(pipeline.group)) as watch, \
            SlowInsert(services, slow_cid, 2):
        workers = [start_worker_as(pipeline, n, **over) for n in names]
        ingest = pipeline.start_ingest(topic_partitions=6)
        wait_until(lambda: all(assigned_partitions(w) for w in workers), 60,
                   0.2, "both workers to hold partitions")
        zombie = None
        r = ingest.post(transcript(slow_cid,
                                   [(f"{slow_cid}-m", "user", "slow")]))
        assert r.status == 202, r
        try:
            name = wait_until(lambda: (services.query(
                "SELECT application_name FROM pg_stat_activity"
                " WHERE wait_event = 'PgSleep'"
                " AND application_name = ANY(%s)", (names,)) or [[None]])[0][0],
                30, 0.02, "a worker to sit in the slow insert")
            zombie = workers[names.index(name)]
            other = workers[1 - names.index(name)]
            zombie.signal(signal.SIGSTOP)
            stopped_at = zombie.log.stat().st_size
            other_at = other.log.stat().st_size
            # Records behind the slow one, on every partition, each sent
            # twice: a batch that repeats a key is built before its
            # transaction opens (a batch of distinct keys opens it first
            # and reads the fence under the locks), so the next owner's
            # fence check under the locks is what is tested here.
            for i in range(30):
                cid = pipeline.cid(f"after{i}")
                for _ in range(2):
                    assert ingest.post(transcript(
                        cid, [(f"{cid}-m", "user", "x")])).status == 202
            blocked = wait_until(lambda: services.query(
                "SELECT count(*) FROM pg_stat_activity WHERE"
                " application_name = %s AND wait_event_type = 'Lock'",
                (other.appname,))[0][0] > 0, SESSION_MS / 1000 * 3 + 20,
                0.1, "the next owner to wait on the zombie's row locks",
                describe=other.log_tail)
            assert blocked
            time.sleep(2)
            assert pipeline.message_count(slow_cid) == 0
            zombie.signal(signal.SIGCONT)
        finally:
            if zombie is not None:
                zombie.signal(signal.SIGCONT)
        wait_rows(pipeline, 31)
        wait_all_committed(pipeline, pipeline.group)
        ztext = zombie.log.read_bytes()[stopped_at:].decode("utf-8",
                                                             "replace")

        def other_text():
            return other.log.read_bytes()[other_at:].decode("utf-8",
                                                             "replace")
        # The next owner's rebuilt batch may be logged after the zombie's
        # later batches committed everything.
        wait_until(lambda: re.search(r" [1-9]\d* already applied",
                                     other_text()), 30, 0.1,
                   "the next owner to skip what the zombie committed",
                   describe=lambda: other_text()[-3000:])
        otext = other_text()
        # The zombie's batch in hand commits as it was (it held the
        # fence), first thing after SIGCONT ...
        first = re.search(r"batch of \d+ records[^\n]*", ztext)
        assert first and "not committed" not in first.group(0) and re.search(
            r"saved 1 messages.* 0 already applied", first.group(0)), (
            ztext[:2000])
        # ... and the next owner's fence moved under it: rebuilt, skipped.
        assert re.search(r"stored offset of partition \d+ moved", otext), (
            otext[:3000])
        assert re.search(r" [1-9]\d* already applied", otext), otext[:3000]
        rows, dups = pipeline.message_count(), pipeline.duplicates()
        assert not dups and rows == 31, (rows, dups)
        assert not watch.backwards(), watch.backwards()
        print(f"\nzombie without idle timeout: next owner blocked on its "
              f"locks until SIGCONT; zombie committed its batch, next "
              f"owner fenced it; rows {rows}, duplicates {len(dups)}")


def test_same_instance_id_twice(pipeline):
    """Two workers given one group_instance_id: the broker fences the
    first; it says why and exits 1 instead of running on without a
    consumer."""
    over = dict(group_instance_id=f"{pipeline.group}-same", **GROUP_TUNING)
    first = pipeline.start_worker(**over)
    second = pipeline.start_worker(**over)
    rc = first.wait(30)
    pipeline.daemons.remove(first)      # its exit is the point
    assert rc == 1, f"exit {rc}; log:\n{first.log_tail()}"
    assert "another worker runs with the same group_instance_id" in (
        first.log_text()), first.log_tail()
    assert not first.crash_lines(), first.log_tail(60)
    second.assert_alive()


# ---------------------------------------------------------------- protocol

def test_cooperative_rebalance_moves_only_what_changes_hands(pipeline,
                                                             services):
    """The group speaks cooperative-sticky: when a second worker joins, the
    first gives up only the partitions that move to it and keeps working on
    the others (an eager protocol revokes all six, then reassigns)."""
    from confluent_kafka.admin import AdminClient
    group = f"{pipeline.group}_coop"
    over = dict(topic_partitions=6, group_id=group, **GROUP_TUNING)
    a = pipeline.start_worker(**over)
    wait_until(lambda: len(assigned_partitions(a)) == 6, 60, 0.2,
               "the first worker to hold all six partitions")
    mark = len(a.log.read_bytes())
    b = pipeline.start_worker(**over)

    def split():
        pa, pb = assigned_partitions(a), assigned_partitions(b)
        return pa and pb and not (pa & pb) and len(pa | pb) == 6
    wait_until(split, 60, 0.2, "two members sharing six partitions")
    moved = assigned_partitions(b)
    after = a.log.read_bytes()[mark:].decode("utf-8", "replace")
    revoked = [int(p) for m in re.finditer(
        r"revoked \d+ partitions[^:]*:(.*)", after)
        for p in re.findall(r"\[(\d+)\]", m.group(1))]
    assert sorted(revoked) == sorted(moved), (
        f"the first worker revoked {sorted(revoked)} while only "
        f"{sorted(moved)} moved")

    admin = AdminClient({"bootstrap.servers": services.brokers})
    desc = admin.describe_consumer_groups([kg(group)])[kg(group)].result(
        timeout=30)
    assert desc.partition_assignor == "cooperative-sticky", (
        desc.partition_assignor)
    assert len(desc.members) == 2, desc.members
    assert a.stop() == 0, a.log_tail()
    assert b.stop() == 0, b.log_tail()
