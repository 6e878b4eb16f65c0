# `sluice-worker replay`: a range of the topic applied again through the
# same handlers and transaction, under a group of its own.
#
# Each test gets two fresh databases on the test PostgreSQL server: "live"
# (the consumer group writes it) and "empty" (a replay fills it), both
# migrated with deploy/migrate.sh, so the tables can be compared whole.

import re
import signal
import subprocess
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from campaign_util import batch, every_kind_sources, msg, post_batch, when
from chat_util import post_chat, status, text_message, webhook
from confluent_kafka import Producer

from harness import (BUILD_DIR, PG_WORKER, REPO, SOURCE, dsn_as, event,
                     transcript, wait_until)

MIGRATE = REPO / "deploy" / "migrate.sh"

# The tables `sluice-worker verify` compares, and the bookkeeping it
# leaves out; together, every table the migrations create.
TABLES = ["conversations", "messages", "leads", "inboxes", "workspaces",
          "campaign_runs", "campaign_messages", "chat_messages",
          "chat_statuses", "chat_turns"]
BOOKKEEPING = ["sluice_offsets", "sluice_owed_invalidations",
               "sluice_schema_migrations"]
# What the worker writes (the others are seeded by the tests).
WRITTEN = ["conversations", "messages", "campaign_runs", "campaign_messages",
           "chat_messages", "chat_statuses", "chat_turns"]
# "messages: key (conversation_id, external_event_id), rows 27 / 27,
#  md5 ... / ...; equal"
VERIFY_LINE = re.compile(r"^(\w+): key \((.*)\), rows (\d+) / (\d+), "
                         r"md5 (\w+) / (\w+); (equal|DIFFERS)$", re.M)


def _dsn_for(dsn, db):
    u = urlsplit(dsn)
    return urlunsplit((u.scheme, u.netloc, f"/{db}", u.query, u.fragment))


class Database:
    def __init__(self, services, tag):
        self.name = f"replay_{tag}_{uuid.uuid4().hex[:8]}"
        self.admin = services.pg_dsn
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{self.name}"')
        self.dsn = _dsn_for(services.pg_dsn, self.name)
        # The daemons (live worker and replay alike) write as the worker's
        # role; the migrations and the checks run as the owner.
        self.worker_dsn = dsn_as(self.dsn, PG_WORKER)
        r = subprocess.run([str(MIGRATE), self.dsn], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr

    def query(self, sql, params=None):
        with psycopg.connect(self.dsn, autocommit=True) as c:
            cur = c.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, sql, params=None):
        rows = self.query(sql, params)
        return rows[0][0] if rows else None

    def checksums(self, pipeline):
        """{table: (rows, md5)} as `sluice-worker verify` computes them
        (the database against itself)."""
        r = verify(pipeline, self, self)
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        return {t[0]: (int(t[2]), t[4])
                for t in VERIFY_LINE.findall(r.stdout)}

    def drop(self):
        with psycopg.connect(self.admin, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.name}"'
                      " WITH (FORCE)")


@pytest.fixture
def dbs(services):
    made = []

    def make(tag):
        d = Database(services, tag)
        made.append(d)
        return d
    yield make
    for d in made:
        d.drop()


def replay(pipeline, db, *args, timeout=120, wait=True):
    """Runs `sluice-worker replay` against db with the pipeline's worker
    settings; returns the CompletedProcess (or the Popen when wait=False)."""
    cfg = pipeline._write(f"replay-{uuid.uuid4().hex[:6]}.conf",
                          pipeline.worker_settings(postgres_dsn=db.worker_dsn))
    cmd = [str(BUILD_DIR / "sluice-worker"), "replay", "-c", str(cfg),
           *args]
    if not wait:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=pipeline.env)
    r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout, env=pipeline.env)
    for marker in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
        assert marker not in r.stderr, r.stderr[-4000:]
    return r


def verify(pipeline, here, against, *args, env=None):
    """`sluice-worker verify` with postgres_dsn = here.dsn and, unless
    args say otherwise, SLUICE_VERIFY_AGAINST = against.dsn."""
    cfg = pipeline._write(f"verify-{uuid.uuid4().hex[:6]}.conf",
                          pipeline.worker_settings(postgres_dsn=here.dsn))
    e = dict(pipeline.env)
    if against is not None:
        e["SLUICE_VERIFY_AGAINST"] = against.dsn
    e.update(env or {})
    r = subprocess.run([str(BUILD_DIR / "sluice-worker"), "verify", "-c",
                        str(cfg), *args], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=120, env=e)
    for marker in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
        assert marker not in r.stderr, r.stderr[-4000:]
    return r


def verified(r):
    """{table: (key, rows here, rows against, equal)} from verify's
    output."""
    return {t[0]: (t[1], int(t[2]), int(t[3]), t[6] == "equal")
            for t in VERIFY_LINE.findall(r.stdout)}


def replayed_copy(pipeline, stack, dbs, tag):
    """The whole topic replayed into a new database seeded as the live one
    was, which verify finds equal to it: (db, replay's, verify's
    CompletedProcess)."""
    db = dbs(tag)
    seed(db, stack["leads"], stack["inbox"])
    r = replay(pipeline, db, "--from", "1970-01-01T00:00:00Z")
    assert r.returncode == 0, r.stderr[-3000:]
    v = verify(pipeline, stack["live"], db)
    assert v.returncode == 0, v.stdout + v.stderr[-3000:]
    return db, r, v


def seed(db, leads, inbox):
    db.query("INSERT INTO inboxes (id, workspace_id, name, connected)"
             " VALUES (%s, 'ws-test', 'inbox', true)", (inbox,))
    for lid, name, deleted in leads:
        db.query("INSERT INTO leads (id, workspace_id, name, attributes,"
                 " deleted_at) VALUES (%s, 'ws-test', %s, '{}'::jsonb, %s)",
                 (lid, name, "2026-01-01T00:00:00Z" if deleted else None))


def traffic(pipeline, ingest, tag):
    """Every kind the worker handles, with duplicates and a dead letter;
    returns what the live database should end up with."""
    cids = [pipeline.cid(f"{tag}{i}") for i in range(6)]
    for i, cid in enumerate(cids):
        entries = [(f"e{k}", "user" if k % 2 else "replica", f"{cid} says {k}")
                   for k in range(5)] if i % 2 else \
            [("user", f"{cid} no id {k}") for k in range(4)]
        assert ingest.post(transcript(cid, entries)).status == 202
        assert ingest.post(transcript(cid, entries)).status == 202  # again
        assert ingest.post(event(cid, "system.replica_joined")).status == 202
    assert ingest.post(event(cids[0], "system.shutdown")).status == 202
    # a record no handler can take (written around the front door, as an
    # older ingest might have): dead-lettered, not a row
    p = Producer({"bootstrap.servers": pipeline.services.brokers})
    p.produce(pipeline.topic, key=cids[0].encode(), value=b"not json",
              headers=[("kind", b"transcript"), ("source", SOURCE.encode())])
    assert p.flush(30) == 0
    return cids


@pytest.fixture
def stack(pipeline, dbs):
    """A live database, a worker writing it, an ingest with every kind."""
    live = dbs("live")
    tag = uuid.uuid4().hex[:6]
    leads = [(f"rl-{tag}-{i}", f"Lead {i}", i == 3) for i in range(5)]
    inbox = f"rin-{tag}"
    seed(live, leads, inbox)
    ingest = pipeline.start_ingest(**every_kind_sources())
    worker = pipeline.start_worker(postgres_dsn=live.worker_dsn)
    return {"live": live, "leads": leads, "inbox": inbox, "tag": tag,
            "ingest": ingest, "worker": worker}


def send_all(pipeline, st):
    ingest, tag = st["ingest"], st["tag"]
    cids = traffic(pipeline, ingest, "a")
    run = f"run-{tag}"
    messages = [msg(f"m-{tag}-{i}", st["leads"][i % 5][0]) for i in range(10)]
    body = batch(run, messages[:6], st["inbox"], run_total=10,
                 end_time=when(3600))
    post_batch(ingest, body)
    post_batch(ingest, body)  # a re-post changes nothing
    post_batch(ingest, batch(run, messages[6:], st["inbox"], run_total=10,
                             end_time=body["end_time"]))
    # an expired run: its end is past when the live worker sees it
    post_batch(ingest, batch(f"old-{tag}", [msg(f"o-{tag}", st["leads"][0][0])],
                             st["inbox"], end_time=when(-60)))
    business = "1555" + tag.encode().hex()[:7]
    sender = "4477" + tag.encode().hex()[:8]
    for k in range(3):
        post_chat(ingest, webhook(business, [text_message(
            f"wamid.{tag}{k}", sender, f"hello {k}")]))
    post_chat(ingest, webhook(business, statuses=[
        status(f"wamid.out{tag}", "delivered", sender)]))
    return cids, run


def caught_up(pipeline, db, group=None, timeout=90):
    """db's stored offsets of group (by default the live worker's groups,
    one per kind's pipeline) reach the topic's ends."""
    groups = [group] if group else pipeline.worker_groups()

    def done():
        if pipeline.worker is not None:
            pipeline.worker.assert_alive()
        per = {}
        for g, p, o in db.query(
                "SELECT group_id, partition, next_offset FROM sluice_offsets"
                " WHERE group_id = ANY(%s) AND topic = %s",
                (groups, pipeline.topic)):
            per.setdefault(p, {})[g] = o
        stored = {p: min(got.get(g, 0) for g in groups)
                  for p, got in per.items()}
        marks = pipeline.services.watermarks(pipeline.topic)
        return all(stored.get(p, 0) >= hi for p, (lo, hi) in marks.items()
                   if hi > lo)
    wait_until(done, timeout, 0.2, f"groups {groups} to reach the ends")


def wait_live(pipeline, st):
    caught_up(pipeline, st["live"])


def test_replay_into_empty_database_reproduces_tables(pipeline, stack, dbs):
    cids, run = send_all(pipeline, stack)
    wait_live(pipeline, stack)
    live = stack["live"]
    assert live.scalar("SELECT status FROM campaign_runs WHERE id = %s",
                       (run,)) == "finished"
    assert live.scalar("SELECT count(*) FROM messages") == 3 * 5 + 3 * 4

    empty, r, v = replayed_copy(pipeline, stack, dbs, "empty")
    tables = verified(v)
    assert sorted(tables) == sorted(TABLES), v.stdout
    assert all(eq for _, _, _, eq in tables.values()), v.stdout
    filled = [t for t in TABLES if t != "workspaces"]
    assert all(tables[t][1] > 0 for t in filled), v.stdout
    # natural keys from the catalog; ids that are natural keys count
    assert tables["conversations"][0] == "id"
    assert tables["campaign_runs"][0] == "id"
    assert tables["messages"][0] == "conversation_id, external_event_id"
    assert tables["campaign_messages"][0] == "message_id"
    assert "not compared: " + ", ".join(BOOKKEEPING) in v.stdout
    # verify's list and the bookkeeping it skips: every table there is
    created = {"sluice_schema_migrations"} | set(re.findall(
        r"CREATE TABLE IF NOT EXISTS (\w+)", "".join(
            f.read_text() for f in (REPO / "schemas" / "migrations")
            .glob("*.sql"))))
    assert created == set(TABLES) | set(BOOKKEEPING), created
    # progress and the summary, as plain lines (not a terminal)
    assert re.search(r"replay: \d+/\d+ records \(100\.0%\)", r.stderr), \
        r.stderr[-2000:]
    assert "replay done:" in r.stderr
    # offsets under the replay's own group, none under the live group's
    groups = dict(empty.query(
        "SELECT group_id, sum(next_offset) FROM sluice_offsets GROUP BY 1"))
    assert list(groups) == [f"{pipeline.group}-replay"], groups
    assert groups[f"{pipeline.group}-replay"] == sum(
        hi for lo, hi in pipeline.services.watermarks(pipeline.topic).values())


def test_replay_judges_end_time_by_the_record(pipeline, stack, dbs):
    """A run's end_time that passed after the live worker applied its
    batch: the replay reproduces "ready", as judged when the record was
    received, not "expired" by today's clock."""
    tag, live = stack["tag"], stack["live"]
    run = f"soon-{tag}"
    post_batch(stack["ingest"], batch(
        run, [msg(f"s-{tag}-{i}", stack["leads"][i][0]) for i in range(2)],
        stack["inbox"], end_time=when(4)))
    wait_live(pipeline, stack)
    want = live.query("SELECT message_id, status, error FROM"
                      " campaign_messages WHERE run_id = %s ORDER BY 1",
                      (run,))
    assert [st for _, st, _ in want] == ["ready", "ready"], want
    time.sleep(5)       # the run's end is past now

    empty = dbs("empty")
    seed(empty, stack["leads"], stack["inbox"])
    r = replay(pipeline, empty, "--from", "1970-01-01T00:00:00Z")
    assert r.returncode == 0, r.stderr[-3000:]
    got = empty.query("SELECT message_id, status, error FROM"
                      " campaign_messages WHERE run_id = %s ORDER BY 1",
                      (run,))
    assert got == want, (got, want)
    runs = "SELECT processed, expired, status FROM campaign_runs WHERE id = %s"
    assert empty.query(runs, (run,)) == live.query(runs, (run,))


def test_replay_over_full_database_changes_nothing(pipeline, stack):
    cids, run = send_all(pipeline, stack)
    wait_live(pipeline, stack)
    live = stack["live"]
    before = live.checksums(pipeline)
    counters = live.query("SELECT id, total, processed, failed, paused,"
                          " expired, status FROM campaign_runs ORDER BY id")
    dead_before = pipeline.services.dlq_count(pipeline.topic)

    r = replay(pipeline, live, "--from", "1970-01-01T00:00:00Z",
               "--group", f"{pipeline.group}-again")
    assert r.returncode == 0, r.stderr[-3000:]
    assert live.checksums(pipeline) == before
    assert live.query("SELECT id, total, processed, failed, paused,"
                      " expired, status FROM campaign_runs ORDER BY id"
                      ) == counters
    assert re.search(r"replay done: \d+ records in \d+ batches, 0 "
                     r"rows saved, [1-9]\d* duplicates", r.stderr), \
        r.stderr[-2000:]
    # the record that can never succeed is dead-lettered again, with its
    # origin, and the replay still reached the end
    assert pipeline.services.dlq_count(pipeline.topic) >= dead_before


def test_dry_run_counts_and_writes_nothing(pipeline, stack, dbs):
    send_all(pipeline, stack)
    wait_live(pipeline, stack)
    empty = dbs("empty")
    seed(empty, stack["leads"], stack["inbox"])
    dead_before = pipeline.services.dlq_count(pipeline.topic)
    r = replay(pipeline, empty, "--from", "1970-01-01T00:00:00Z",
               "--dry-run")
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"dry run: (\d+) records read, \d+ rows would be "
                  r"saved, (\d+) duplicates skipped, (\d+) records would be "
                  r"dead-lettered \(.*transcript (\d+) saved.*\); nothing "
                  r"was written", r.stdout)
    assert m, r.stdout + r.stderr[-2000:]
    records = sum(hi for lo, hi in
                  pipeline.services.watermarks(pipeline.topic).values())
    assert int(m.group(1)) == records
    # each batch is counted against the database as it is (rolled back),
    # so at least the distinct messages would be saved
    assert 27 <= int(m.group(4)) <= 54
    for table in WRITTEN:
        assert empty.scalar(f"SELECT count(*) FROM {table}") == 0, table
    assert empty.scalar("SELECT count(*) FROM sluice_offsets") == 0
    assert pipeline.services.dlq_count(pipeline.topic) == dead_before


def test_dry_run_agrees_with_the_real_run(pipeline, stack, dbs):
    """A dry run under a group that already applied the range reads what
    the real run would: nothing left, not the whole range again."""
    send_all(pipeline, stack)
    wait_live(pipeline, stack)
    copy = dbs("agree")
    seed(copy, stack["leads"], stack["inbox"])
    group = f"{pipeline.group}-agree"
    r = replay(pipeline, copy, "--from", "1970-01-01T00:00:00Z",
               "--group", group)
    assert r.returncode == 0, r.stderr[-3000:]
    dry = replay(pipeline, copy, "--from", "1970-01-01T00:00:00Z",
                 "--group", group, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "a real run would resume there" in dry.stderr, dry.stderr[-2000:]
    assert re.search(r"dry run: 0 records read, 0 rows would be saved",
                     dry.stdout), dry.stdout + dry.stderr[-2000:]
    again = replay(pipeline, copy, "--from", "1970-01-01T00:00:00Z",
                   "--group", group)
    assert again.returncode == 0 and "resuming there" in again.stderr
    assert re.search(r"replay done: 0 records", again.stderr), \
        again.stderr[-2000:]


def test_range_by_time_and_offsets(pipeline, stack, dbs):
    ingest = stack["ingest"]
    first = [pipeline.cid(f"early{i}") for i in range(3)]
    for cid in first:
        assert ingest.post(transcript(cid, [("e1", "user", "x")])).status \
            == 202
    caught_up(pipeline, stack["live"])
    time.sleep(1.5)
    cut = time.time()
    time.sleep(1.5)
    later = [pipeline.cid(f"late{i}") for i in range(3)]
    for cid in later:
        assert ingest.post(transcript(cid, [("e1", "user", "y")])).status \
            == 202
    caught_up(pipeline, stack["live"])
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut)) + \
        f".{int(cut * 1000) % 1000:03d}Z"

    empty = dbs("time")
    r = replay(pipeline, empty, "--from", iso)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {c for (c,) in empty.query("SELECT id FROM conversations")}
    assert got == set(later), got

    # --to by time: only the early ones
    early = dbs("to")
    r = replay(pipeline, early, "--from", "2000-01-01T00:00:00Z", "--to",
               iso)
    assert r.returncode == 0, r.stderr[-3000:]
    got = {c for (c,) in early.query("SELECT id FROM conversations")}
    assert got == set(first), got

    # explicit offsets: one partition, its first record only
    marks = pipeline.services.watermarks(pipeline.topic)
    p = next(p for p, (lo, hi) in marks.items() if hi - lo >= 1)
    one = dbs("offsets")
    r = replay(pipeline, one, "--from", f"{p}:0", "--to", f"{p}:1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert one.scalar("SELECT count(*) FROM conversations") == 1
    assert one.query("SELECT partition, next_offset FROM sluice_offsets") \
        == [(p, 1)]


def test_stopped_replay_resumes_with_its_group(pipeline, stack, dbs):
    ingest = stack["ingest"]
    cids = [pipeline.cid(f"r{i}") for i in range(120)]
    for cid in cids:
        assert ingest.post(transcript(cid, [("e1", "user", cid)])).status \
            == 202
    caught_up(pipeline, stack["live"])
    empty = dbs("resume")
    proc = replay(pipeline, empty, "--from", "1970-01-01T00:00:00Z",
                  "--rate", "20", wait=False)
    try:
        wait_until(lambda: empty.scalar("SELECT count(*) FROM messages")
                   >= 20, 30, 0.2, "the slow replay to apply 20 records")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "run it again with --group" in err
    done = empty.scalar("SELECT count(*) FROM messages")
    assert 20 <= done < len(cids), done
    # a plain progress line with the rate, what is left and the ETA
    assert re.search(r"replay: \d+/120 records .* records/s, \d+ left, ETA",
                     err), err[-2000:]

    r = replay(pipeline, empty, "--from", "1970-01-01T00:00:00Z")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming there" in r.stderr
    assert empty.scalar("SELECT count(*) FROM messages") == len(cids)
    assert empty.scalar("SELECT count(DISTINCT conversation_id)"
                        " FROM messages") == len(cids)
    applied = sum(int(n) for n in re.findall(r"replay done: (\d+) records",
                                             r.stderr))
    assert applied == len(cids) - done, r.stderr[-2000:]


def test_bad_arguments_are_refused(pipeline, dbs):
    cfg = pipeline._write("bad.conf", pipeline.worker_settings())
    binary = str(BUILD_DIR / "sluice-worker")
    for args, text in [
            (["replay", "-c", str(cfg)], "replay needs --from"),
            (["replay", "-c", str(cfg), "--from", "yesterday"],
             "RFC 3339"),
            (["replay", "-c", str(cfg), "--from", "0:0", "--rate", "0"],
             "--rate"),
            (["replay", "-c", str(cfg), "--from", "2026-01-02T00:00:00Z",
              "--to", "2026-01-01T00:00:00Z"], "later than"),
            (["replay", "-c", str(cfg), "--from", "0:100", "--to", "0:50"],
             "--to 0:50 is before --from 0:100"),
            (["replay", "-c", str(cfg), "--from", "0:5", "--to", "0:9,1:3"],
             "--to names partition 1"),
            (["replay", "-c", str(cfg), "--from", "0:-5"], "negative"),
            (["-c", str(cfg), "--from", "0:0"], "belong to replay"),
            (["redrive", "-c", str(cfg), "--max-attempts", "x"],
             "--max-attempts"),
            (["rewind", "-c", str(cfg)], "unknown mode")]:
        r = subprocess.run([binary, *args], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 2, (args, r.stderr)
        assert text in r.stderr, (args, r.stderr)
    # a partition the topic does not have
    pipeline.start_worker()  # creates the topic
    db = dbs("bad")
    r = replay(pipeline, db, "--from", "77:0")
    assert r.returncode == 2 and "partition 77" in r.stderr, r.stderr
    r = replay(pipeline, db, "--from", "0:0", "--to", "0:5,77:9")
    assert r.returncode == 2 and "partition 77" in r.stderr, r.stderr


def test_backwards_range_on_the_topic_is_refused(pipeline, stack, dbs):
    """A time --from past an offset --to is judged once the topic is read,
    and refused before any record is applied."""
    ingest = stack["ingest"]
    for i in range(4):
        assert ingest.post(transcript(pipeline.cid(f"back{i}"),
                                      [("e1", "user", "x")])).status == 202
    caught_up(pipeline, stack["live"])
    marks = pipeline.services.watermarks(pipeline.topic)
    p, (lo, hi) = next((p, m) for p, m in marks.items() if m[1] > m[0])
    db = dbs("backwards")
    r = replay(pipeline, db, "--from", "2100-01-01T00:00:00Z", "--to",
               f"{p}:{lo}")
    assert r.returncode == 2, r.stderr[-3000:]
    assert f"--to is before --from on partition {p}" in r.stderr, r.stderr
    assert "replaying" not in r.stderr, r.stderr
    assert db.scalar("SELECT count(*) FROM sluice_offsets") == 0
    # the same range the right way round is applied
    r = replay(pipeline, db, "--from", f"{p}:{lo}", "--to", f"{p}:{hi}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert db.scalar("SELECT count(*) FROM conversations") == hi - lo


def test_verify_names_a_changed_and_a_missing_row(pipeline, stack, dbs,
                                                  tmp_path):
    send_all(pipeline, stack)
    wait_live(pipeline, stack)
    live = stack["live"]
    copy, _, _ = replayed_copy(pipeline, stack, dbs, "verify")

    cid, eid = copy.query("SELECT conversation_id, external_event_id FROM"
                          " messages ORDER BY 1, 2 LIMIT 1")[0]
    copy.query("UPDATE messages SET content = content || ' (edited)'"
               " WHERE conversation_id = %s AND external_event_id = %s",
               (cid, eid))
    mid = copy.scalar("SELECT message_id FROM campaign_messages"
                      " ORDER BY 1 DESC LIMIT 1")
    copy.query("DELETE FROM campaign_messages WHERE message_id = %s", (mid,))
    v = verify(pipeline, live, copy)
    assert v.returncode == 1, v.stdout + v.stderr[-3000:]
    tables = verified(v)
    assert not tables["messages"][3] and not tables["campaign_messages"][3]
    assert tables["messages"][1] == tables["messages"][2]
    assert tables["campaign_messages"][1] == tables["campaign_messages"][2] + 1
    assert [t for t, (_, _, _, eq) in tables.items() if not eq] == \
        ["messages", "campaign_messages"], v.stdout
    assert f"  changed: ({cid},{eid})" in v.stdout, v.stdout
    assert f"  only here: {mid}" in v.stdout, v.stdout
    assert "verify: 2 of 10 tables differ" in v.stdout
    # the other way round, the row is missing on the other side
    v = verify(pipeline, copy, live)
    assert v.returncode == 1 and f"  only against: {mid}" in v.stdout

    # the DSN from a file (a password need not be in argv)
    f = tmp_path / "against.dsn"
    f.write_text(copy.dsn + "\n")
    f.chmod(0o600)  # a DSN may hold a password: read as a secret
    v = verify(pipeline, live, None, "--against-file", str(f))
    assert v.returncode == 1 and f"  only here: {mid}" in v.stdout, \
        v.stdout + v.stderr

    # usage and connection errors: 2
    for args, env, text in [
            ([], {}, "SLUICE_VERIFY_AGAINST is needed"),
            (["--against", copy.dsn, "--against-file", str(f)], {},
             "exclude each other"),
            (["--against", "postgresql://u:secret@127.0.0.1:1/x"], {},
             "password does not belong in argv"),
            ([], {"SLUICE_VERIFY_AGAINST": "postgresql://127.0.0.1:1/x"},
             "against (127.0.0.1:1/x)"),
            (["--against", copy.dsn, "--dry-run"], {}, "--dry-run")]:
        v = verify(pipeline, live, None, *args, env=env)
        assert v.returncode == 2, (args, v.stdout, v.stderr)
        assert text in v.stderr, (args, v.stderr)
        assert "secret" not in v.stderr + v.stdout


def test_replay_elsewhere_with_the_live_redis_is_refused(pipeline, stack,
                                                        dbs):
    """A replay into another database than postgres_dsn would remove keys
    from the live cache for rows it never touches there: refused, unless
    it removes none (--no-invalidate) or uses another Redis."""
    ingest, live = stack["ingest"], stack["live"]
    cids = [pipeline.cid(f"safe{i}") for i in range(3)]
    for cid in cids:
        assert ingest.post(transcript(cid, [("e1", "user", "x")])).status \
            == 202
    caught_up(pipeline, live)
    rds = pipeline.services.redis()
    keys = [f"messages:{cid}:1:50" for cid in cids]
    for k in keys:
        rds.set(k, "cached page")
    scratch = dbs("scratch")
    cfg = pipeline._write(f"live-{uuid.uuid4().hex[:6]}.conf",
                          pipeline.worker_settings(postgres_dsn=live.dsn))

    def run(*args, env=None):
        e = dict(pipeline.env)
        e.update(env or {})
        r = subprocess.run([str(BUILD_DIR / "sluice-worker"), "replay", "-c",
                            str(cfg), "--from", "1970-01-01T00:00:00Z",
                            *args], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=120,
                           env=e)
        for marker in ("AddressSanitizer", "runtime error:"):
            assert marker not in r.stderr, r.stderr[-4000:]
        return r

    # the same Redis spelled otherwise is still the live one
    # (removesuffix, not rstrip("/0"): that also ate a port's last 0s,
    # and so named another Redis)
    same = pipeline.services.redis_url.removesuffix("/0") if \
        pipeline.services.redis_url.endswith("/0") else \
        pipeline.services.redis_url + "/0"
    for args, env in [(["--into", scratch.dsn], {}),
                      ([], {"SLUICE_REPLAY_INTO": scratch.dsn}),
                      (["--into", scratch.dsn, "--redis-url", same], {})]:
        r = run(*args, env=env)
        assert r.returncode == 2, (args, r.stderr[-3000:])
        assert "refusing to replay into" in r.stderr, r.stderr
        assert "--no-invalidate" in r.stderr and "--redis-url" in r.stderr
        assert "replaying" not in r.stderr, r.stderr
    assert all(rds.exists(k) for k in keys)
    for table in WRITTEN + ["sluice_offsets", "sluice_owed_invalidations"]:
        assert scratch.scalar(f"SELECT count(*) FROM {table}") == 0, table

    # into the live database itself, spelled as a key=value string: the
    # live worker removes the same keys, so nothing to refuse (checked
    # with a dry run, which removes nothing)
    u = urlsplit(live.dsn)
    kv = f"host={u.hostname} port={u.port} dbname={live.name}" + \
        (f" user={u.username}" if u.username else "")
    r = run("--into", kv, "--dry-run")
    assert r.returncode == 0, r.stderr[-3000:]

    r = run("--into", scratch.dsn, "--no-invalidate")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no cache key is removed" in r.stderr
    assert scratch.scalar("SELECT count(*) FROM messages") == \
        live.scalar("SELECT count(*) FROM messages")
    assert all(rds.exists(k) for k in keys)
    assert scratch.scalar("SELECT count(*) FROM sluice_owed_invalidations") \
        == 0
    assert live.scalar("SELECT count(*) FROM sluice_offsets WHERE group_id"
                       " = %s", (f"{pipeline.group}-replay",)) == 0

    # another Redis (here: another database of the same server) takes the
    # replay's invalidations; the live one keeps its keys
    r7 = urlsplit(pipeline.services.redis_url)._replace(path="/7").geturl()
    other = pipeline.services.redis(r7)
    for k in keys:
        other.set(k, "scratch cache")
    scratch2 = dbs("scratch2")
    r = run("--into", scratch2.dsn, "--redis-url", r7)
    assert r.returncode == 0, r.stderr[-3000:]
    assert scratch2.scalar("SELECT count(*) FROM messages") == \
        live.scalar("SELECT count(*) FROM messages")
    assert not any(other.exists(k) for k in keys)
    assert all(rds.exists(k) for k in keys)
