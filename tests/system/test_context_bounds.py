# Lead contexts that cannot be used, and lookups that must end
# (docs/campaigns.md, "Bounded lookups and poison contexts"):
#
# - a context that is not UTF-8 or holds a NUL (raw or \u0000) fails only
#   its lead's messages (context_invalid), is never cached, and one already
#   cached by an older version is a miss and is deleted; the batch commits
#   and what was posted after it lands;
# - the same for chat: the person's turn opens without a lead;
# - timed-out PostgreSQL lookups are cancelled on the server: never more
#   than K running, none left once the batch has committed;
# - lead_context.batch_budget_ms: a hung source holds a batch no longer.

import threading
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from campaign_util import (add_inbox, batch, campaign_ingest, campaign_lines,
                           counters, http_worker, msg, post_batch, uid,
                           wait_rows)
from chat_util import (PhoneStub, business_number, chat_ingest, post_chat,
                       text_message, wa_id, wait_turns, wamid, webhook)
from harness import PG_LOOKUP, dsn_as, transcript, wait_until
from leadstub import LeadStub

# Bodies a CRM answered: JSON objects whose content PostgreSQL cannot store
# (not UTF-8) or C strings would cut (a NUL in a value or a key).
UNUSABLE = {
    "utf8": b'{"lead":{"name":"\xff\xfe"}}',
    "nul": b'{"lead":{"name":"a\\u0000b"}}',
    "nulkey": b'{"lead":{"na\\u0000me":"a"}}',
    "rawnul": b'{"lead":{"name":"a\x00b"}}',
}


@pytest.fixture
def stub():
    s = LeadStub().start()
    yield s
    s.stop()


def _agree(services, run):
    """The run's counters against its rows, as one dict each."""
    c = counters(services, run)
    by = dict(services.query(
        "SELECT status, count(*) FROM campaign_messages WHERE run_id = %s"
        " GROUP BY status", (run,)))
    return c, by


def _transcript_lands(pipeline, ingest, worker):
    """A transcript posted now is stored: the batch before it committed."""
    cid = pipeline.cid("after")
    r = ingest.post(transcript(cid, [("user", "still flowing")]))
    assert r.status == 202, r
    wait_until(lambda: (worker.assert_alive(), pipeline.messages(cid))[1],
               30, 0.1, message=f"the transcript of {cid} to land",
               describe=lambda: worker.log_tail(15))


# ---------------------------------------------------------------- poison

def test_unusable_context_fails_only_its_lead(pipeline, services, stub):
    worker = http_worker(pipeline, stub, lead_context__retries=2)
    ingest = campaign_ingest(pipeline)
    inbox = add_inbox(services, uid("inbox-"))
    fine = uid(f"{pipeline.prefix}fine-")
    stub.set(fine, {"lead": {"name": "Fine"}})
    leads = {}
    for kind, body in UNUSABLE.items():
        leads[kind] = uid(f"{pipeline.prefix}{kind}-")
        stub.set_raw(leads[kind], body)
    run = uid("run-")
    messages = [msg(f"{run}-fine", fine)] + [
        msg(f"{run}-{kind}", lead) for kind, lead in leads.items()]
    post_batch(ingest, batch(run, messages, inbox))
    _transcript_lands(pipeline, ingest, worker)

    got = wait_rows(services, run, len(messages), worker=worker)
    assert (got[f"{run}-fine"]["status"], got[f"{run}-fine"]["parts"]) == \
        ("ready", ["Hi Fine"]), got[f"{run}-fine"]
    bad = {kind: (got[f"{run}-{kind}"]["status"], got[f"{run}-{kind}"]["error"])
           for kind in UNUSABLE}
    assert bad == {kind: ("failed", "context_invalid") for kind in UNUSABLE}, bad
    # Counted where an operator looks: the batch line.
    assert sum(d.get("invalid", 0) for d in campaign_lines(
        worker.log_text())) == len(UNUSABLE), worker.log_text()[-1500:]
    c, by = _agree(services, run)
    assert c == {"total": 5, "processed": 1, "failed": 4, "paused": 0,
                 "expired": 0, "status": "finished"}, c
    assert by == {"ready": 1, "failed": 4}, by
    # Retrying cannot mend the data: one GET each, nothing cached.
    assert {k: stub.calls_for(l) for k, l in leads.items()} == \
        {k: 1 for k in leads}, stub.snapshot()
    r = services.redis()
    assert {k: r.exists(f"lead_ctx:{l}") for k, l in leads.items()} == \
        {k: 0 for k in leads}, "an unusable context was cached"
    assert r.exists(f"lead_ctx:{fine}") == 1
    assert not any(r.exists(f"lead_ctx_lock:{l}") for l in leads.values()), \
        "a lease outlived its lookup"


def test_answer_with_bytes_after_its_json_is_not_a_context(pipeline,
                                                          services, stub):
    """`{...} junk` is a broken answer, not the object at its start: the
    lookup fails like any other answer that is not one JSON object
    (retried, then context_unavailable), and nothing is cached."""
    worker = http_worker(pipeline, stub, lead_context__retries=1)
    ingest = campaign_ingest(pipeline)
    inbox = add_inbox(services, uid("inbox-"))
    lead = uid(f"{pipeline.prefix}junk-")
    stub.set_raw(lead, b'{"lead":{"name":"Start"}} junk')
    run = uid("run-")
    post_batch(ingest, batch(run, [msg(f"{run}-0", lead)], inbox))
    got = wait_rows(services, run, 1, worker=worker)
    assert (got[f"{run}-0"]["status"], got[f"{run}-0"]["error"]) == \
        ("failed", "context_unavailable"), got
    assert stub.calls_for(lead) == 2, stub.snapshot()
    assert services.redis().exists(f"lead_ctx:{lead}") == 0


def test_unusable_context_in_redis_is_a_miss(pipeline, services, stub):
    """Values an older sluice cached: read as a miss, then overwritten by
    the source's good context or deleted."""
    worker = http_worker(pipeline, stub)
    ingest = campaign_ingest(pipeline)
    inbox = add_inbox(services, uid("inbox-"))
    mended = uid(f"{pipeline.prefix}mended-")
    stub.set(mended, {"lead": {"name": "Good"}})
    still_bad = uid(f"{pipeline.prefix}bad-")
    stub.set_raw(still_bad, UNUSABLE["utf8"])
    r = services.redis()
    r.set(f"lead_ctx:{mended}", b'{"lead":{"name":"\xff"}}', px=300000)
    r.set(f"lead_ctx:{still_bad}", b'{"lead":{"name":"x\\u0000y"}}',
          px=300000)
    run = uid("run-")
    post_batch(ingest, batch(run, [msg(f"{run}-0", mended),
                                   msg(f"{run}-1", still_bad)], inbox))
    got = wait_rows(services, run, 2, worker=worker)
    assert (got[f"{run}-0"]["status"], got[f"{run}-0"]["parts"]) == \
        ("ready", ["Hi Good"]), got
    assert (got[f"{run}-1"]["status"], got[f"{run}-1"]["error"]) == \
        ("failed", "context_invalid"), got
    assert stub.calls_for(mended) == 1 and stub.calls_for(still_bad) == 1
    wait_until(lambda: r.get(f"lead_ctx:{mended}") ==
               b'{"lead": {"name": "Good"}}', 10, 0.1,
               message="the good context to replace the bad one",
               describe=lambda: repr(r.get(f"lead_ctx:{mended}")))
    assert r.exists(f"lead_ctx:{still_bad}") == 0, \
        "an unusable cached context was left in Redis"


def test_chat_unusable_phone_context_is_not_cached(pipeline, services):
    phonestub = PhoneStub().start()
    try:
        biz, who = business_number(), wa_id()
        phonestub.set_raw(who, b'{"lead":{"id":"x","name":"\xff\xfe"}}')
        worker = pipeline.start_worker(
            lead_context__source="http", lead_context__url=phonestub.url,
            lead_context__phone_url=phonestub.phone_url, redis_timeout_ms=300)
        ingest = chat_ingest(pipeline)
        m1 = wamid()
        post_chat(ingest, webhook(biz, [text_message(m1, who, "hi")]))
        t = wait_turns(services, biz, who, [("open", [m1])],
                       worker=worker)[0]
        # As for a failed lookup: the turn opens without a lead.
        assert (t["lead_id"], t["lead_context"]) == (None, None), t
        assert services.redis().exists(f"lead_phone_ctx:{who}") == 0, \
            "an unusable phone context was cached"
        assert phonestub.calls_for(who) == 1, phonestub.snapshot()
    finally:
        phonestub.stop()


# ---------------------------------------------------------------- PostgreSQL

@pytest.fixture
def hung_db(services):
    """A database of its own whose get_lead_full_context never returns."""
    name = f"ctxhang_{uuid.uuid4().hex[:10]}"
    services.query(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(services.pg_dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as c:
        c.execute("CREATE FUNCTION get_lead_full_context(p_lead_id text)"
                  " RETURNS jsonb LANGUAGE plpgsql AS"
                  " $$ BEGIN PERFORM pg_sleep(600); RETURN NULL; END $$")
        c.execute("GRANT EXECUTE ON FUNCTION get_lead_full_context(text)"
                  f" TO {PG_LOOKUP}")
    # The worker looks leads up as sluice_lookup, as everywhere.
    yield name, dsn_as(dsn, PG_LOOKUP)
    # Whatever the worker left running (the old code left plenty).
    services.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                   " WHERE datname = %s", (name,))
    services.query(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


HUNG_SQL = ("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND state = 'active' AND query LIKE '%%get_lead_full_context%%'")


class Sampler:
    """Counts, every 50 ms, the hung database's queries running the
    function; keeps the highest count and any failure to connect."""

    def __init__(self, services, name):
        self.conn = psycopg.connect(services.pg_dsn, autocommit=True,
                                    connect_timeout=10)
        self.name = name
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            n = self.conn.execute(HUNG_SQL, (self.name,)).fetchone()[0]
            self.peak = max(self.peak, n)
            self.samples += 1
            self._stop.wait(0.05)

    def stop(self):
        self._stop.set()
        self._t.join(10)
        self.conn.close()


def test_timed_out_postgres_lookups_are_cancelled(pipeline, services,
                                                  hung_db):
    name, dsn = hung_db
    k, n = 4, 32
    worker = pipeline.start_worker(
        lead_context__source="postgres", lead_context__postgres_dsn=dsn,
        lead_context__concurrency=k, lead_context__timeout_ms=300,
        lead_context__retries=1)
    ingest = campaign_ingest(pipeline)
    inbox = add_inbox(services, uid("inbox-"))
    run = uid("run-")
    sampler = Sampler(services, name)
    try:
        post_batch(ingest, batch(run, [
            msg(f"{run}-{i}", uid(f"{pipeline.prefix}hung-"))
            for i in range(n)], inbox))
        got = wait_rows(services, run, n, timeout=60, worker=worker)
    finally:
        sampler.stop()
    assert {(r["status"], r["error"]) for r in got.values()} == \
        {("failed", "context_unavailable")}, got
    assert sampler.samples > 10, sampler.samples
    assert sampler.peak <= k, (
        f"{sampler.peak} get_lead_full_context queries running at once "
        f"with concurrency {k}: timed-out lookups were left running")
    # None outlives the batch (cancelled, or ended by statement_timeout).
    wait_until(lambda: services.scalar(HUNG_SQL, (name,)) == 0, 5, 0.1,
               message="no lookup left running after the commit",
               describe=lambda: services.query(
                   "SELECT pid, state, now() - query_start FROM"
                   " pg_stat_activity WHERE datname = %s", (name,)))
    # The server still takes connections, and the worker holds at most K.
    assert services.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
        (name,)) <= k
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
        assert c.execute("SELECT 1").fetchone()[0] == 1
    assert f"{n} failed" in campaign_lines(worker.log_text())[-1]["line"]


# ---------------------------------------------------------------- budget

def test_budget_bounds_a_hung_source(pipeline, services, stub):
    k, n, budget_ms = 5, 40, 2000
    stub.delay = 120                    # every lead hangs
    worker = http_worker(pipeline, stub, lead_context__concurrency=k,
                         lead_context__timeout_ms=60000,
                         lead_context__retries=0,
                         lead_context__batch_budget_ms=budget_ms)
    ingest = campaign_ingest(pipeline)
    inbox = add_inbox(services, uid("inbox-"))
    leads = [uid(f"{pipeline.prefix}hung-") for _ in range(n)]
    for lead in leads:
        stub.set(lead, {"lead": {"name": "Never"}})
    run = uid("run-")
    post_batch(ingest, batch(run, [msg(f"{run}-{i}", lead)
                                   for i, lead in enumerate(leads)], inbox))
    # Without the budget: n / K waves of timeout_ms, about 8 minutes.
    got = wait_rows(services, run, n, timeout=40, worker=worker)
    _transcript_lands(pipeline, ingest, worker)
    assert {(r["status"], r["error"]) for r in got.values()} == \
        {("failed", "context_unavailable")}, got
    c, by = _agree(services, run)
    assert c == {"total": n, "processed": 0, "failed": n, "paused": 0,
                 "expired": 0, "status": "finished"}, c
    assert by == {"failed": n}, by
    line = campaign_lines(worker.log_text())[-1]
    # The lookups took the budget, not more (slack for a loaded machine).
    assert budget_ms - 100 <= line["lookup_ms"] < budget_ms + 3000, \
        line["line"]
    assert line["peak"] == k and line["lookups"] == k, line["line"]
    # Every lead was given up by the budget: k in flight, the rest unasked.
    assert line["over_budget"] == n, line["line"]
    assert stub.snapshot()["total"] == k, stub.snapshot()
    assert "lookup budget" in worker.log_text()
    # The leases of the leads given up are let go at once.
    r = services.redis()
    wait_until(lambda: not any(r.exists(f"lead_ctx_lock:{lead}")
                               for lead in leads), 5, 0.1,
               message="the given-up leads' leases to be released")
