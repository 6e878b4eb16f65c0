# The per-message rules of docs/campaigns.md, each on the rows of
# campaign_messages and the run's counters: expired (offsets compared as
# instants), paused (inbox missing / disconnected), context_unavailable
# (retries exhausted), lead_not_found, lead_deleted, missing_var, rendering,
# splitting, too_many_parts; then one batch mixing them all.
#
# One ingest + worker (HTTP context source) serves the whole module; every
# test uses runs, leads and inboxes of its own.

import datetime as dt
import random
from urllib.parse import unquote

import pytest

from campaign_util import (add_inbox, add_lead, batch, campaign_ingest,
                           campaign_lines, check_counters, counters,
                           finish_pipeline,
                           http_worker, module_pipeline, msg, post_batch,
                           post_lead_updated, run_row, statuses, uid,
                           wait_rows, when)
from harness import wait_until
from leadstub import LeadStub

TIMEOUT_MS = 1000
RETRIES = 2


class Env:
    pass


@pytest.fixture(scope="module", params=["http", "postgres"])
def env(request, services, tmp_path_factory):
    """The module's ingest + worker, once with the HTTP context source (the
    stub) and once with PostgreSQL (get_lead_full_context over leads)."""
    e = Env()
    e.source = request.param
    e.http = e.source == "http"
    e.services = services
    e.stub = LeadStub().start()
    e.pipeline = module_pipeline(request, services, tmp_path_factory)
    try:
        if e.http:
            e.worker = http_worker(e.pipeline, e.stub,
                                   lead_context__timeout_ms=TIMEOUT_MS,
                                   lead_context__retries=RETRIES)
        else:
            e.worker = e.pipeline.start_worker(lead_context__source="postgres")
        e.ingest = campaign_ingest(e.pipeline)
        e.inbox = add_inbox(services, uid("inbox-"))
        e.tag = e.pipeline.prefix
        yield e
        # Whatever the tests did, no run's counters disagree with its rows.
        check_counters(services)
    finally:
        try:
            finish_pipeline(e.pipeline)
        finally:
            e.stub.stop()


def http_only(e):
    if not e.http:
        pytest.skip("needs the HTTP stub (failures, delays, raw contexts)")


def _lead(e, name, ctx="default", lead=None):
    """A lead with this context at the source: the stub's, or a row of
    `leads` (only contexts a row can express)."""
    lead = lead or uid(f"{e.tag}{name}-")
    if ctx == "default":
        ctx = {"lead": {"name": name}}
    if e.http:
        e.stub.set(lead, ctx)
        return lead
    row = ctx.get("lead") if isinstance(ctx, dict) else None
    if (row is None or set(ctx) != {"lead"} or
            not set(row) <= {"name", "email", "deleted_at"} or
            not isinstance(row.get("name"), (str, type(None)))):
        pytest.skip(f"context {ctx} not expressible as a leads row")
    add_lead(e.services, lead, row.get("name"),
             deleted_at=row.get("deleted_at"), email=row.get("email"))
    return lead


def _run(e, messages, inbox=None, **kw):
    run = uid("run-")
    msgs = [msg(f"{run}-{i}", lead, v) for i, (lead, v) in
            enumerate(messages)]
    post_batch(e.ingest, batch(run, msgs, inbox or e.inbox, **kw))
    return run


def _wait(e, run, n, timeout=30):
    got = wait_rows(e.services, run, n, timeout, worker=e.worker)
    assert len(got) == n, f"{len(got)} rows for {n} messages: {got}"
    return got


def _by_index(got):
    return {int(m.rsplit("-", 1)[1]): r for m, r in got.items()}


def _c(processed=0, failed=0, paused=0, expired=0, total=None, status=None):
    return {"total": total, "processed": processed, "failed": failed,
            "paused": paused, "expired": expired, "status": status}


# ---------------------------------------------------------------- expired

def test_expired_instants_any_offset(env):
    e = env
    lead = _lead(e, "Ann")
    # 1 h ago written in +05:30: its wall-clock reads as a future time.
    past = when(-3600, 330)
    # 1 h ahead written in -08:00: its wall-clock reads as a past time.
    future = when(3600, -480)
    assert past.endswith("+05:30") and future.endswith("-08:00")
    r_past = _run(e, [(lead, None)] * 3, end_time=past, run_total=10)
    r_future = _run(e, [(lead, None)] * 2, end_time=future, run_total=10)
    # Expired comes before paused: a missing inbox does not matter.
    r_both = _run(e, [(lead, None)], inbox=uid("no-inbox-"), end_time=past,
                  run_total=10)
    # Every message of a run expired: terminal, so the run is finished.
    r_all = _run(e, [(lead, None)] * 2, end_time=past, run_total=2)

    got = _wait(e, r_past, 3)
    assert {r["status"] for r in got.values()} == {"expired"}, got
    assert all(r["parts"] is None for r in got.values()), got
    assert counters(e.services, r_past) == _c(expired=3, total=10,
                                              status="expired")
    rr = run_row(e.services, r_past)
    assert rr["finished_at"] is None
    assert rr["end_time"] == dt.datetime.fromisoformat(past), (
        rr["end_time"], past)

    got = _wait(e, r_future, 2)
    assert [r["status"] for r in got.values()] == ["ready", "ready"], got
    assert counters(e.services, r_future) == _c(processed=2, total=10,
                                                status="running")
    assert run_row(e.services, r_future)["end_time"] == \
        dt.datetime.fromisoformat(future)

    got = _wait(e, r_both, 1)
    assert [r["status"] for r in got.values()] == ["expired"], got
    assert counters(e.services, r_both) == _c(expired=1, total=10,
                                              status="expired")

    got = _wait(e, r_all, 2)
    assert counters(e.services, r_all) == _c(expired=2, total=2,
                                             status="finished")
    assert run_row(e.services, r_all)["finished_at"] is not None


# ---------------------------------------------------------------- paused

def test_paused_inbox_missing(env):
    e = env
    ok = _lead(e, "Bob")
    unknown = uid(f"{e.tag}unknown-")
    # Paused comes before the lead's own rules: an unknown lead is paused.
    run = _run(e, [(ok, None), (ok, None), (unknown, None)],
               inbox=uid("no-such-inbox-"), run_total=5)
    got = _wait(e, run, 3)
    assert {m: (r["status"], r["parts"]) for m, r in got.items()} == {
        m: ("paused", None) for m in got}, got
    assert counters(e.services, run) == _c(paused=3, total=5,
                                           status="paused")
    assert run_row(e.services, run)["finished_at"] is None


def test_paused_inbox_disconnected(env):
    e = env
    ok = _lead(e, "Cy")
    inbox = add_inbox(e.services, uid("inbox-off-"), connected=False)
    run = _run(e, [(ok, None), (ok, None)], inbox=inbox, run_total=2)
    got = _wait(e, run, 2)
    assert {r["status"] for r in got.values()} == {"paused"}, got
    # Paused is not terminal: run_total reached in messages, not finished.
    assert counters(e.services, run) == _c(paused=2, total=2,
                                           status="paused")
    assert run_row(e.services, run)["finished_at"] is None


# ---------------------------------------------------------------- leads

def test_lead_not_found(env):
    e = env
    missing = uid(f"{e.tag}404-")            # the stub answers 404
    ok = _lead(e, "Dee")
    items = [(missing, None), (ok, None), (missing, None)]
    if e.http:
        null = uid(f"{e.tag}null-")
        e.stub.set(null, None)               # 200 with body null
        items.append((null, None))
    n = len(items)
    run = _run(e, items, run_total=n)
    got = _by_index(_wait(e, run, n))
    assert [(got[i]["status"], got[i]["error"]) for i in range(n)] == [
        ("failed", "lead_not_found"), ("ready", None),
        *[("failed", "lead_not_found")] * (n - 2)], got
    assert got[0]["parts"] is None
    assert got[0]["lead_id"] == missing
    assert counters(e.services, run) == _c(processed=1, failed=n - 1,
                                           total=n, status="finished")
    if e.http:
        # A 404 is an answer, not a failure: no retry.
        assert e.stub.calls_for(missing) == 1


def test_lead_deleted(env):
    e = env
    gone = _lead(e, "Gone", {"lead": {"name": "Gone",
                                      "deleted_at": "2026-01-01T00:00:00Z"}})
    alive = _lead(e, "Alive", {"lead": {"name": "Alive",
                                        "deleted_at": None}})
    run = _run(e, [(gone, None), (alive, None)], run_total=3)
    got = _by_index(_wait(e, run, 2))
    assert (got[0]["status"], got[0]["error"], got[0]["parts"]) == (
        "failed", "lead_deleted", None), got[0]
    assert (got[1]["status"], got[1]["parts"]) == ("ready", ["Hi Alive"]), \
        got[1]
    assert counters(e.services, run) == _c(processed=1, failed=1, total=3,
                                           status="running")


# ---------------------------------------------------------------- templates

def test_missing_var(env):
    e = env
    ann = _lead(e, "Ann")
    noname = _lead(e, "x", {"lead": {"email": "x@example.com"}})
    nullname = _lead(e, "x", {"lead": {"name": None}})
    run = _run(e, [
        (ann, {"offer": "20% off"}),        # ready
        (ann, None),                        # no vars at all
        (ann, {"other": 1}),                # vars without offer
        (ann, {"offer": None}),             # null
        (ann, {"offer": {"pct": 20}}),      # an object
        (ann, {"offer": [1, 2]}),           # an array
        (noname, {"offer": "x"}),           # lead.name missing
        (nullname, {"offer": "x"}),         # lead.name null
    ] + ([(_lead(e, "x", {"lead": {"name": {"first": "A"}}}),
           {"offer": "x"})] if e.http else []),   # lead.name an object
        template="Hi {{lead.name}}, {{vars.offer}}", run_total=20)
    n = 9 if e.http else 8
    got = _by_index(_wait(e, run, n))
    want = [("ready", None), *[("failed", "missing_var:vars.offer")] * 5,
            *[("failed", "missing_var:lead.name")] * (n - 6)]
    assert [(got[i]["status"], got[i]["error"]) for i in range(n)] == want, \
        {i: (got[i]["status"], got[i]["error"]) for i in range(n)}
    assert got[0]["parts"] == ["Hi Ann, 20% off"]
    assert counters(e.services, run) == _c(processed=1, failed=n - 1,
                                           total=20, status="running")

    run2 = _run(e, [(ann, {"offer": "x"})], run_total=20,
                template="{{lead.x}}")
    got = _wait(e, run2, 1)
    assert [(r["status"], r["error"]) for r in got.values()] == [
        ("failed", "missing_var:lead.x")], got


def test_rendering(env):
    e = env
    http_only(e)
    lead = _lead(e, "Eve", {"lead": {"name": "Ève \"Q\"",
                                     "address": {"city": "Paris"},
                                     "score": 7, "vip": False},
                            "message_count": 12})
    template = ("Hi {{ lead.name }}: {{vars.offer}} n={{vars.n}} "
                "f={{vars.f}} b={{vars.b}} city={{lead.address.city}} "
                "s={{lead.score}} v={{lead.vip}} mc={{message_count}} "
                "lit={{vars.lit}}")
    run = _run(e, [(lead, {"offer": "20% off", "n": 3, "f": 2.5, "b": True,
                           "lit": "{{lead.name}}"})],
               template=template, run_total=1, split_max_chars=1000)
    got = _wait(e, run, 1)
    (r,) = got.values()
    assert r["status"] == "ready", r
    assert r["parts"] == [
        'Hi Ève "Q": 20% off n=3 f=2.5 b=true city=Paris s=7 v=false '
        'mc=12 lit={{lead.name}}'], r["parts"]
    assert counters(e.services, run) == _c(processed=1, total=1,
                                           status="finished")


def test_ids_integers_and_percent_encoding(env):
    e = env
    odd = _lead(e, "Odd", lead=uid(f"{e.tag}a b/c?d#e%f&é+-"))
    n_lead = random.randrange(10**14, 10**15)
    _lead(e, "Num", lead=str(n_lead))
    # Below 2**53: the ingest refuses larger integers (cJSON doubles).
    n_msg = random.randrange(10**15, 2**53)
    run = uid("run-")
    post_batch(e.ingest, batch(run, [msg(f"{run}-0", odd),
                                     msg(n_msg, n_lead)], e.inbox))
    got = _wait(e, run, 2)
    assert got[f"{run}-0"]["parts"] == ["Hi Odd"], got
    assert got[f"{run}-0"]["lead_id"] == odd
    assert str(n_msg) in got, f"integer message id not stored as text: {got}"
    assert got[str(n_msg)]["lead_id"] == str(n_lead)
    assert got[str(n_msg)]["parts"] == ["Hi Num"]
    if not e.http:
        return
    assert e.stub.calls_for(odd) == 1
    raw = [p for p in e.stub.raw_paths if unquote(p) == odd]
    assert raw, f"no request for {odd!r}: {e.stub.raw_paths[-5:]}"
    assert not any(c in p for p in raw for c in " /?#"), (
        f"lead id not percent-encoded in the URL: {raw}")


# ---------------------------------------------------------------- splitting

def _split_run(e, text, max_chars, max_parts, lead):
    return _run(e, [(lead, {"text": text})], template="{{vars.text}}",
                split_max_chars=max_chars, max_split_parts=max_parts,
                run_total=5)


def test_split(env):
    e = env
    lead = _lead(e, "S")
    rnd = random.Random(7)
    words = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyzé")
                     for _ in range(rnd.randint(1, 12))) for _ in range(80)]
    long_text = " ".join(words)
    cases = {
        "long": (long_text, 40, 100),
        # 11 code points but 21 bytes per "ééééé ééééé": 2 parts only if
        # characters are counted, not bytes.
        "codepoints": ("ééééé ééééé ééééé ééééé", 11, 2),
        "exact": ("aaaaaaaaaa bbbbbbbbbb cccccccccc", 10, 3),
        "over": ("aaaaaaaaaa bbbbbbbbbb cccccccccc dddddddddd", 10, 3),
        "cut": ("ab " + "x" * 25 + " cd", 10, 10),
    }
    runs = {k: _split_run(e, *v, lead) for k, v in cases.items()}
    got = {k: next(iter(_wait(e, r, 1).values())) for k, r in runs.items()}

    r = got["long"]
    assert r["status"] == "ready", r
    parts = r["parts"]
    assert all(0 < len(p) <= 40 for p in parts), [len(p) for p in parts]
    assert all(p == p.strip() for p in parts), parts
    assert " ".join(parts) == long_text, parts
    assert len(parts) >= len(long_text) // 40

    r = got["codepoints"]
    assert (r["status"], r["parts"]) == (
        "ready", ["ééééé ééééé", "ééééé ééééé"]), r

    r = got["exact"]
    assert (r["status"], r["parts"]) == (
        "ready", ["aaaaaaaaaa", "bbbbbbbbbb", "cccccccccc"]), r

    r = got["over"]
    assert (r["status"], r["error"], r["parts"]) == (
        "failed", "too_many_parts", None), r
    assert counters(e.services, runs["over"]) == _c(failed=1, total=5,
                                                    status="running")

    r = got["cut"]
    assert r["status"] == "ready", r
    assert all(0 < len(p) <= 10 for p in r["parts"]), r["parts"]
    assert "".join(r["parts"]).replace(" ", "") == "ab" + "x" * 25 + "cd", r


# ---------------------------------------------------------------- source

def test_context_unavailable_only_that_lead(env):
    e = env
    http_only(e)
    broken = _lead(e, "Broken")
    e.stub.fail(broken)                          # 500 for ever
    flaky = _lead(e, "Flaky")
    e.stub.fail(flaky, RETRIES)                  # the last attempt works
    slow = _lead(e, "Slow")
    e.stub.set_delay(slow, TIMEOUT_MS / 1000 + 0.7)   # always times out
    fine = _lead(e, "Fine")
    # 200 but not a JSON object: "anything else is a failure (retried)".
    garbage = uid(f"{e.tag}garbage-")
    e.stub.set_raw(garbage, b"<html>oops</html>")
    array = uid(f"{e.tag}array-")
    e.stub.set_raw(array, b'[{"lead": {"name": "A"}}]')
    run = _run(e, [(broken, None), (fine, None), (broken, None),
                   (flaky, None), (slow, None), (garbage, None),
                   (array, None)], run_total=10)
    got = _by_index(_wait(e, run, 7, timeout=40))
    assert [(got[i]["status"], got[i]["error"]) for i in range(5)] == [
        ("failed", "context_unavailable"), ("ready", None),
        ("failed", "context_unavailable"), ("ready", None),
        ("failed", "context_unavailable")], got
    assert got[1]["parts"] == ["Hi Fine"] and got[3]["parts"] == ["Hi Flaky"]
    assert counters(e.services, run) == _c(processed=2, failed=5, total=10,
                                           status="running")
    assert e.stub.calls_for(broken) == 1 + RETRIES
    assert e.stub.calls_for(flaky) == 1 + RETRIES
    # A timed-out attempt ends on the worker's clock: its request may
    # still be on its way into the stub (a loaded machine) when the rows
    # land, so the count is awaited, then checked not to go past it.
    wait_until(lambda: e.stub.calls_for(slow) >= 1 + RETRIES, 10, 0.1,
               f"{1 + RETRIES} GETs of the slow lead")
    assert e.stub.calls_for(slow) == 1 + RETRIES
    assert e.stub.calls_for(fine) == 1
    r = e.services.redis()
    assert r.get(f"lead_ctx:{broken}") is None, "a failure was cached"
    assert r.get(f"lead_ctx:{slow}") is None, "a timeout was cached"
    # Checked last: the bodies that are not a JSON object.
    bad = {lead: (got[i]["status"], got[i]["error"], e.stub.calls_for(lead))
           for i, lead in ((5, garbage), (6, array))}
    assert all(v == ("failed", "context_unavailable", 1 + RETRIES)
               for v in bad.values()), (
        f"200 with a body that is not a JSON object: (status, error, "
        f"GETs) {bad}; want failed context_unavailable after "
        f"{1 + RETRIES} GETs")


# ---------------------------------------------------------------- all of it

def test_mixed_batch_exact_counters(env):
    e = env
    a = _lead(e, "Al")
    b = _lead(e, "Bo")
    deleted = _lead(e, "Del", {"lead": {"name": "Del",
                                        "deleted_at": "2026-02-02T02:02:02Z"}})
    unknown = uid(f"{e.tag}unknown-")
    messages = [
        (a, {"offer": "x"}),                 # 0 ready
        (a, {"offer": "y"}),                 # 1 ready (same lead)
        (b, {"offer": "z"}),                 # 2 ready
        (unknown, {"offer": "x"}),           # 3 lead_not_found
        (deleted, {"offer": "x"}),           # 4 lead_deleted
        (b, {}),                             # 5 missing_var:vars.offer
        (a, {"offer": "w " * 30}),           # 6 too_many_parts
    ]
    if e.http:
        broken = _lead(e, "Broken")
        e.stub.fail(broken)
        messages.append((broken, {"offer": "x"}))  # 7 context_unavailable
    n = len(messages)
    n_lines = len(campaign_lines(e.worker.log_text()))
    run = _run(e, messages, template="{{lead.name}} {{vars.offer}}",
               split_max_chars=12, max_split_parts=2, run_total=20)
    got = _by_index(_wait(e, run, n))
    assert [(got[i]["status"], got[i]["error"]) for i in range(n)] == [
        ("ready", None), ("ready", None), ("ready", None),
        ("failed", "lead_not_found"), ("failed", "lead_deleted"),
        ("failed", "missing_var:vars.offer"), ("failed", "too_many_parts"),
        ("failed", "context_unavailable")][:n], got
    assert [got[i]["parts"] for i in range(3)] == [["Al x"], ["Al y"],
                                                   ["Bo z"]]
    assert counters(e.services, run) == _c(processed=3, failed=n - 3,
                                           total=20, status="running")
    if e.http:
        assert e.stub.calls_for(a) == 1, \
            "a lead named twice was fetched twice"

    def line():
        for d in campaign_lines(e.worker.log_text())[n_lines:]:
            if d.get("messages") == n:
                return d
    d = wait_until(line, 10, message="the batch's campaign log line")
    for k, v in {"runs": 1, "leads": n - 3, "ready": 3, "failed": n - 3,
                 "paused": 0, "expired": 0}.items():
        assert d.get(k) == v, f"{k}: want {v} in {d['line']!r}"

    # A second batch of the same run mixing paused-free outcomes with one
    # already-seen id: counters move by the new rows only.
    run_msgs = [msg(f"{run}-0", a, {"offer": "x"}),      # seen: ready
                msg(f"{run}-3", a, {"offer": "x"}),      # seen: failed
                msg(f"{run}-8", a, {"offer": "q"}),      # new: ready
                msg(f"{run}-9", unknown, {"offer": "q"})]  # new: failed
    post_batch(e.ingest, batch(run, run_msgs, e.inbox, run_total=20,
                               template="{{lead.name}} {{vars.offer}}",
                               split_max_chars=12, max_split_parts=2))
    _wait(e, run, n + 2)
    assert counters(e.services, run) == _c(processed=4, failed=n - 2,
                                           total=20, status="running")
    st = statuses(e.services, run)
    assert st[f"{run}-3"] == ("failed", "lead_not_found"), st


# ---------------------------------------------------------------- postgres

def test_postgres_source_rendering_and_invalidation(pipeline, services):
    inbox = add_inbox(services, uid("inbox-"))
    ann = add_lead(services, uid(f"{pipeline.prefix}ann-"), "Ann",
                   attributes={"code": "X1"})
    solo = add_lead(services, uid(f"{pipeline.prefix}solo-"), "Solo")
    gone = add_lead(services, uid(f"{pipeline.prefix}gone-"), "Gone",
                    deleted_at="2026-01-01T00:00:00Z")
    unknown = uid(f"{pipeline.prefix}unknown-")
    conv = pipeline.cid("conv")
    services.query("INSERT INTO conversations (id, source, status, lead_id)"
                   " VALUES (%s, 'tavus', 'ended', %s)", (conv, ann))
    worker = pipeline.start_worker(lead_context__concurrency=3)
    ingest = campaign_ingest(pipeline)
    template = ("Hi {{lead.name}}, {{vars.offer}} [{{last_conversation"
                ".status}}] {{lead.attributes.code}}")
    run = uid("run-")

    def send(tag, items):
        post_batch(ingest, batch(run, [msg(f"{run}-{tag}{i}", lead, v)
                                       for i, (lead, v) in enumerate(items)],
                                 inbox, template=template, run_total=20))
    send("a", [(ann, {"offer": "20% off"}), (solo, {"offer": "x"}),
               (gone, {"offer": "x"}), (unknown, {"offer": "x"})])
    got = wait_rows(services, run, 4, worker=worker)
    st = {m: (r["status"], r["error"], r["parts"]) for m, r in got.items()}
    assert st == {
        f"{run}-a0": ("ready", None, ["Hi Ann, 20% off [ended] X1"]),
        # No conversation: last_conversation is null.
        f"{run}-a1": ("failed", "missing_var:last_conversation.status",
                      None),
        f"{run}-a2": ("failed", "lead_deleted", None),
        f"{run}-a3": ("failed", "lead_not_found", None),
    }, st
    assert counters(services, run) == _c(processed=1, failed=3, total=20,
                                         status="running")

    # Cached: a change in PostgreSQL is not seen until lead_updated.
    services.query("UPDATE leads SET name = 'Anna' WHERE id = %s", (ann,))
    send("b", [(ann, {"offer": "y"})])
    got = wait_rows(services, run, 5, worker=worker)
    assert got[f"{run}-b0"]["parts"] == ["Hi Ann, y [ended] X1"], \
        got[f"{run}-b0"]
    post_lead_updated(ingest, ann)
    r = services.redis()
    wait_until(lambda: r.get(f"lead_ctx:{ann}") is None, 15,
               message="lead_updated to drop the cached context")
    send("c", [(ann, {"offer": "z"})])
    got = wait_rows(services, run, 6, worker=worker)
    assert got[f"{run}-c0"]["parts"] == ["Hi Anna, z [ended] X1"], \
        got[f"{run}-c0"]
    assert counters(services, run) == _c(processed=3, failed=3, total=20,
                                         status="running")


# ---------------------------------------------------------------- Redis

def test_run_key_removed_after_commit(env):
    """campaign_invalidate_keys (default campaign_run:{run_id}): the run's
    key goes after the commit, another run's stays."""
    e = env
    lead = _lead(e, "Kay")
    r = e.services.redis()
    run = uid("run-")
    other = uid("run-other-")
    r.set(f"campaign_run:{run}", b"cached")
    r.set(f"campaign_run:{other}", b"cached")
    r.set(f"campaign_run:{run}:x", b"keep")
    try:
        post_batch(e.ingest, batch(run, [msg(f"{run}-0", lead)], e.inbox))
        _wait(e, run, 1)
        wait_until(lambda: not r.exists(f"campaign_run:{run}"), 10,
                   message=f"campaign_run:{run} to be removed")
        assert r.get(f"campaign_run:{other}") == b"cached", \
            "another run's key was removed"
        assert r.get(f"campaign_run:{run}:x") == b"keep", \
            "a key outside the pattern was removed"
    finally:
        r.delete(f"campaign_run:{other}", f"campaign_run:{run}:x")
