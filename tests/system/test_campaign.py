# Campaign batches end to end (docs/campaigns.md): bounded-concurrency
# lookups through the Redis cache, Redis down, re-posted and overlapping
# batches, the run's counters and its end, leases shared by two workers,
# and a fill that must not land after an invalidation.

import json
import threading
import time

from campaign_util import (Pair, add_inbox, add_lead, batch, campaign_ingest,
                           campaign_lines, counters, http_worker, msg,
                           post_batch, post_lead_updated, rows, run_row,
                           set_inbox, statuses, uid, wait_rows, wait_run)
from harness import wait_until


def _redis_ctx(r, lead):
    v = r.get(f"lead_ctx:{lead}")
    return None if v is None else v.decode("utf-8", "replace")


def _ver(r, lead):
    v = r.get(f"lead_ctx_ver:{lead}")
    return int(v) if v is not None else 0


def _nlines(worker):
    return len(campaign_lines(worker.log_text()))


def _line_with(worker, skip=0, **want):
    """The first campaign log line of `worker`, after the first `skip`,
    whose fields include `want` (waits for it: the line may come right
    after the commit)."""
    def find():
        for d in campaign_lines(worker.log_text())[skip:]:
            if all(d.get(k) == v for k, v in want.items()):
                return d
        return None
    return wait_until(find, 10, 0.1,
                      message=f"a worker 'campaign:' log line with {want}",
                      describe=lambda: "\n".join(
                          d["line"] for d in campaign_lines(
                              worker.log_text())[-5:]) or "no such line")


def _status_only(services, run):
    return {m: st for m, (st, _err) in statuses(services, run).items()}


def _no_updated_at(row):
    return {k: v for k, v in row.items() if k != "updated_at"}


def test_bounded_concurrency_cache_and_redis_down(pipeline, services,
                                                  leadstub):
    K = 10
    inbox = add_inbox(services, uid("inbox-"))
    leads = [f"{pipeline.prefix}L{i}" for i in range(100)]
    for i, lead in enumerate(leads):
        leadstub.set(lead, {"lead": {"name": f"Name{i}"}})
    leadstub.delay = 0.1
    worker = http_worker(pipeline, leadstub, lead_context__concurrency=K)
    ingest = campaign_ingest(pipeline)
    run = uid("run-")

    # -- 100 distinct cold leads, 100 ms each, at most K in flight.
    b1 = batch(run, [msg(f"{run}-a{i}", lead) for i, lead in
                     enumerate(leads)], inbox, run_total=300)
    t0 = time.monotonic()
    post_batch(ingest, b1)
    got = wait_rows(services, run, 100, timeout=30, worker=worker)
    elapsed = time.monotonic() - t0
    bad = {m: (r["status"], r["parts"], r["error"]) for m, r in got.items()
           if (r["status"], r["parts"]) !=
           ("ready", [f"Hi Name{int(m.rsplit('-a', 1)[1])}"])}
    assert not bad, f"{len(bad)} messages not ready as rendered: " \
                    f"{sorted(bad.items())[:5]}"
    snap = leadstub.snapshot()
    assert snap["total"] == 100, f"stub called {snap['total']} times for " \
                                 "100 distinct leads"
    assert all(leadstub.calls_for(lead) == 1 for lead in leads), snap["calls"]
    assert snap["peak"] == K, (f"peak concurrency at the source "
                               f"{snap['peak']}, lead_context.concurrency "
                               f"= {K}")
    # Sequential would take 10 s of lookups alone; K=10 takes about 1 s.
    assert elapsed < 5.0, f"100 lookups of 100 ms with K={K} took " \
                          f"{elapsed:.1f} s end to end"
    c = counters(services, run)
    assert c == {"total": 300, "processed": 100, "failed": 0, "paused": 0,
                 "expired": 0, "status": "running"}, c
    assert run_row(services, run)["finished_at"] is None
    line = _line_with(worker, messages=100)
    for k, v in {"leads": 100, "hits": 0, "misses": 100, "lookups": 100,
                 "peak": K, "ready": 100, "failed": 0, "paused": 0,
                 "expired": 0}.items():
        assert line.get(k) == v, f"{k}: want {v} in {line['line']!r}"
    assert 900 <= line.get("lookup_ms", 1000) < 5000, line["line"]

    # The contexts are cached with the configured TTL (default 300 s).
    r = services.redis()
    for i, lead in enumerate(leads):
        v = _redis_ctx(r, lead)
        assert v is not None and f"Name{i}" in v, (lead, v)
        ttl = r.pttl(f"lead_ctx:{lead}")
        assert 0 < ttl <= 300_000, (lead, ttl)

    # -- The same batch again: nothing fetched, nothing counted, rows kept.
    before = rows(services, run)
    n = _nlines(worker)
    post_batch(ingest, b1)
    pipeline.wait_caught_up(timeout=30)
    assert leadstub.snapshot()["total"] == 100, "a re-posted batch fetched"
    assert counters(services, run) == c
    assert rows(services, run) == before, "a re-posted batch changed rows"

    # -- New messages for the same leads: 100 cache hits, no lookup.
    b2 = batch(run, [msg(f"{run}-b{i}", lead) for i, lead in
                     enumerate(leads)], inbox, run_total=300)
    n = _nlines(worker)
    post_batch(ingest, b2)
    wait_rows(services, run, 200, timeout=30, worker=worker)
    assert leadstub.snapshot()["total"] == 100, \
        "cached contexts were fetched again"
    c = counters(services, run)
    assert (c["processed"], c["failed"], c["status"]) == (200, 0,
                                                          "running"), c
    line = _line_with(worker, skip=n, messages=100, hits=100)
    assert line.get("lookups", 0) == 0 and line.get("misses") == 0, \
        line["line"]

    # -- Redis down: new leads go to the source, the batch completes.
    leads3 = [f"{pipeline.prefix}R{i}" for i in range(100)]
    for i, lead in enumerate(leads3):
        leadstub.set(lead, {"lead": {"name": f"Red{i}"}})
    leadstub.delay = 0.02
    b3 = batch(run, [msg(f"{run}-c{i}", lead) for i, lead in
                     enumerate(leads3)], inbox, run_total=300)
    services.stop_redis()
    try:
        n = _nlines(worker)
        post_batch(ingest, b3)
        got = wait_rows(services, run, 300, timeout=60, worker=worker)
        worker.assert_alive()
        third = {m: r for m, r in got.items() if m.startswith(f"{run}-c")}
        assert len(third) == 100
        bad = {m: (r["status"], r["parts"], r["error"])
               for m, r in third.items()
               if (r["status"], r["parts"]) !=
               ("ready", [f"Hi Red{int(m.rsplit('-c', 1)[1])}"])}
        assert not bad, f"with Redis down: {sorted(bad.items())[:5]}"
        assert all(leadstub.calls_for(lead) == 1 for lead in leads3), \
            {lead: leadstub.calls_for(lead) for lead in leads3[:10]}
        assert leadstub.in_flight() == 0
        c = counters(services, run)
        assert c == {"total": 300, "processed": 300, "failed": 0,
                     "paused": 0, "expired": 0, "status": "finished"}, c
        assert run_row(services, run)["finished_at"] is not None
        line = _line_with(worker, skip=n, messages=100)
        pipeline.wait_caught_up(timeout=30)
    finally:
        services.start_redis()
    worker.assert_alive()
    # docs/campaigns.md: leads that went to the source because Redis was
    # down are "counted in the batch log line as redis errors".
    assert line.get("redis_errors", 0) > 0, (
        f"Redis was down and the line counts no redis errors: "
        f"{line['line']!r}")


def test_repost_overlap_paused_and_finish(pipeline, services):
    """(PostgreSQL context source.)"""
    inbox = add_inbox(services, uid("inbox-"), connected=False)
    leads = [f"{pipeline.prefix}L{i}" for i in range(6)]
    for i, lead in enumerate(leads):
        add_lead(services, lead, f"N{i}")
    worker = pipeline.start_worker()
    ingest = campaign_ingest(pipeline)
    run = uid("run-")
    m = [f"{run}-m{i}" for i in range(6)]

    def b(idx, offer="A"):
        return batch(run, [msg(m[i], leads[i], {"offer": offer})
                           for i in idx], inbox, run_total=6,
                     template="{{lead.name}} {{vars.offer}}")

    # Batch 1 (m0..m2) while the inbox is disconnected: paused.
    post_batch(ingest, b([0, 1, 2]))
    wait_rows(services, run, 3, worker=worker)
    assert _status_only(services, run) == {x: "paused" for x in m[:3]}
    c1 = counters(services, run)
    assert c1 == {"total": 6, "processed": 0, "failed": 0, "paused": 3,
                  "expired": 0, "status": "paused"}, c1

    # Re-posted while still disconnected: evaluated again, still paused,
    # no counter moves.
    post_batch(ingest, b([0, 1, 2]))
    pipeline.wait_caught_up()
    assert counters(services, run) == c1

    # The inbox connects; batch 2 overlaps on m2 (paused -> ready) and
    # brings m3..m5.
    set_inbox(services, inbox, True)
    post_batch(ingest, b([2, 3, 4, 5]))
    wait_rows(services, run, 6, worker=worker)
    pipeline.wait_caught_up()
    st = _status_only(services, run)
    assert st == {m[0]: "paused", m[1]: "paused",
                  **{x: "ready" for x in m[2:]}}, st
    assert all(r["error"] is None and r["parts"] == [f"N{i} A"]
               for i, r in ((int(x.rsplit("-m", 1)[1]), r)
                            for x, r in rows(services, run).items()
                            if r["status"] == "ready")), rows(services, run)
    c2 = counters(services, run)
    assert c2 == {"total": 6, "processed": 4, "failed": 0, "paused": 2,
                  "expired": 0, "status": "paused"}, c2
    assert run_row(services, run)["finished_at"] is None, \
        "finished with 2 of 6 messages still paused"
    ready_rows = {x: r for x, r in rows(services, run).items()
                  if r["status"] == "ready"}

    # Batch 2 again with other vars: the ready ones are left alone.
    post_batch(ingest, b([2, 3, 4, 5], offer="CHANGED"))
    pipeline.wait_caught_up()
    assert counters(services, run) == c2
    now = rows(services, run)
    assert {x: now[x] for x in ready_rows} == ready_rows, \
        "a re-posted batch rewrote ready messages"

    # Batch 1 re-posted: m0, m1 leave paused for ready -> 6 terminal =
    # run_total: finished in this very transaction.
    post_batch(ingest, b([0, 1, 2], offer="B"))
    c3 = wait_run(services, run, lambda c: c["processed"] == 6,
                  what="6 processed", worker=worker)
    assert c3 == {"total": 6, "processed": 6, "failed": 0, "paused": 0,
                  "expired": 0, "status": "finished"}, c3
    rr = run_row(services, run)
    assert rr["finished_at"] is not None
    now = rows(services, run)
    assert now[m[0]]["parts"] == ["N0 B"] and now[m[1]]["parts"] == ["N1 B"]
    assert now[m[2]] == ready_rows[m[2]], "m2 (ready) was evaluated again"

    # Anything re-posted after the end changes nothing, finished_at included.
    post_batch(ingest, b([0, 1, 2, 3, 4, 5], offer="C"))
    pipeline.wait_caught_up()
    assert _no_updated_at(run_row(services, run)) == _no_updated_at(rr)
    assert rows(services, run) == now


def test_finished_exactly_at_run_total(pipeline, services):
    """Two batches with overlapping message ids: the run ends when the
    distinct terminal messages reach run_total, and not one batch before.
    (PostgreSQL context source.)"""
    inbox = add_inbox(services, uid("inbox-"))
    lead = add_lead(services, f"{pipeline.prefix}L", "Zed")
    worker = pipeline.start_worker()
    ingest = campaign_ingest(pipeline)
    run = uid("run-")
    ids = [f"{run}-{i}" for i in range(5)]
    unknown = f"{pipeline.prefix}nobody"

    # 3 messages (one failed), run_total 5.
    post_batch(ingest, batch(run, [msg(ids[0], lead), msg(ids[1], lead),
                                   msg(ids[2], unknown)], inbox, run_total=5))
    wait_rows(services, run, 3, worker=worker)
    c = counters(services, run)
    assert c == {"total": 5, "processed": 2, "failed": 1, "paused": 0,
                 "expired": 0, "status": "running"}, c

    # 3 more, 2 of which already seen: 4 distinct terminal < 5.
    post_batch(ingest, batch(run, [msg(ids[1], lead), msg(ids[2], lead),
                                   msg(ids[3], lead)], inbox, run_total=5))
    wait_rows(services, run, 4, worker=worker)
    pipeline.wait_caught_up()
    c = counters(services, run)
    assert c == {"total": 5, "processed": 3, "failed": 1, "paused": 0,
                 "expired": 0, "status": "running"}, c
    assert statuses(services, run)[ids[2]] == ("failed", "lead_not_found"), \
        "a failed message was evaluated again"
    assert run_row(services, run)["finished_at"] is None

    # The fifth distinct message ends the run.
    post_batch(ingest, batch(run, [msg(ids[3], lead), msg(ids[4], lead)],
                             inbox, run_total=5))
    c = wait_run(services, run, lambda c: c["processed"] == 4,
                 what="4 processed", worker=worker)
    assert c == {"total": 5, "processed": 4, "failed": 1, "paused": 0,
                 "expired": 0, "status": "finished"}, c
    rr = run_row(services, run)
    assert rr["finished_at"] is not None
    last = max(r["updated_at"] for r in rows(services, run).values())
    assert abs((rr["finished_at"] - last).total_seconds()) < 1, (
        rr["finished_at"], last)


def test_default_concurrency_is_five(pipeline, services, leadstub):
    """Without lead_context.concurrency, at most 5 lookups are in flight,
    and the source does see 5 at once (a batch does not go one by one)."""
    inbox = add_inbox(services, uid("inbox-"))
    leads = [f"{pipeline.prefix}D{i}" for i in range(20)]
    for i, lead in enumerate(leads):
        leadstub.set(lead, {"lead": {"name": f"D{i}"}})
    leadstub.delay = 0.3
    worker = http_worker(pipeline, leadstub)
    ingest = campaign_ingest(pipeline)
    run = uid("run-")
    post_batch(ingest, batch(run, [msg(f"{run}-{i}", lead) for i, lead in
                                   enumerate(leads)], inbox))
    got = wait_rows(services, run, len(leads), timeout=60, worker=worker)
    assert all(r["status"] == "ready" for r in got.values()), got
    snap = leadstub.snapshot()
    assert all(leadstub.calls_for(lead) == 1 for lead in leads), snap["calls"]
    assert snap["peak"] == 5, (
        f"peak lookups in flight {snap['peak']} with the default "
        "lead_context.concurrency (5)")


def test_two_workers_share_one_cold_lead(pipeline, services, leadstub):
    """Two workers (own groups, own topics) take the same cold lead at the
    same moment: one lease, one fetch, both outcomes ready."""
    inbox = add_inbox(services, uid("inbox-"))
    shared = f"{pipeline.prefix}shared"
    leadstub.set(shared, {"lead": {"name": "Shared"}})
    # The fetch lasts long enough (3 s) that the second worker reaches the
    # lead while it is in flight even on a slow, loaded box; a shorter one
    # let the second worker find the filled cache instead of the lease.
    leadstub.set_delay(shared, 3.0)
    own = {}
    for tag in ("a", "b"):
        own[tag] = f"{pipeline.prefix}own-{tag}"
        leadstub.set(own[tag], {"lead": {"name": f"Own{tag}"}})
    slow = {"lead_context__timeout_ms": 15000, "lead_context__lease_ms": 15000}
    a = Pair(pipeline, "a", leadstub, worker_over=slow, wait=False)
    b = Pair(pipeline, "b", leadstub, worker_over=slow, wait=False)
    a.worker.wait_log(r"assigned")
    b.worker.wait_log(r"assigned")

    runs = {"a": uid("run-a-"), "b": uid("run-b-")}
    bodies = {t: batch(runs[t], [msg(f"{runs[t]}-s", shared),
                                 msg(f"{runs[t]}-o", own[t])], inbox)
              for t in runs}
    results = {}
    go = threading.Barrier(2)

    def send(tag, pair):
        go.wait()
        results[tag] = post_batch(pair.ingest, bodies[tag], expect=None)
    ts = [threading.Thread(target=send, args=(t, p))
          for t, p in (("a", a), ("b", b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert all(r.status == 202 for r in results.values()), results

    for tag, pair in (("a", a), ("b", b)):
        got = wait_rows(services, runs[tag], 2, timeout=30,
                        worker=pair.worker)
        st = {k: (v["status"], v["parts"]) for k, v in got.items()}
        assert st == {f"{runs[tag]}-s": ("ready", ["Hi Shared"]),
                      f"{runs[tag]}-o": ("ready", [f"Hi Own{tag}"])}, st
    assert leadstub.calls_for(shared) == 1, (
        f"the shared cold lead was fetched {leadstub.calls_for(shared)} "
        "times by two workers")
    waits = sum(d.get("lease_waits", 0) for p in (a, b)
                for d in campaign_lines(p.worker.log_text()))
    assert waits >= 1, ("no worker reports a lease wait although both "
                        "batches named the same cold lead at once: " +
                        " | ".join(d["line"] for p in (a, b) for d in
                                   campaign_lines(p.worker.log_text())))


def _stale_fill(pipeline, services, leadstub, invalidate):
    inbox = add_inbox(services, uid("inbox-"))
    lead = f"{pipeline.prefix}stale"
    leadstub.set(lead, {"lead": {"name": "OLDNAME"}})
    leadstub.set_delay(lead, 2.5)
    r = services.redis()
    v0 = _ver(r, lead)
    a = Pair(pipeline, "a", leadstub)
    run = uid("run-")
    post_batch(a.ingest, batch(run, [msg(f"{run}-1", lead)], inbox,
                               run_total=10))
    wait_until(lambda: leadstub.in_flight(lead) >= 1, 15,
               message="worker A's lookup of the lead to start")

    # While A's fetch is in flight the lead changes and is invalidated.
    leadstub.set(lead, {"lead": {"name": "NEWNAME"}})
    leadstub.set_delay(lead, 0)
    invalidate(lead)
    wait_until(lambda: _ver(r, lead) > v0, 10,
               message=f"lead_ctx_ver:{lead} to be incremented")
    assert leadstub.in_flight(lead) >= 1, (
        "the invalidation came after A's lookup ended; the test did not "
        "test anything")

    wait_rows(services, run, 1, timeout=30, worker=a.worker)
    a.caught_up(services)
    v = _redis_ctx(r, lead)
    assert v is None or ("OLDNAME" not in v and "NEWNAME" in v), (
        f"a fill begun before the invalidation landed after it: "
        f"lead_ctx:{lead} = {v!r}")
    time.sleep(0.5)
    v = _redis_ctx(r, lead)
    assert v is None or "OLDNAME" not in v, v

    # The next batch reads the new context.
    calls = leadstub.calls_for(lead)
    post_batch(a.ingest, batch(run, [msg(f"{run}-2", lead)], inbox,
                               run_total=10))
    got = wait_rows(services, run, 2, timeout=30, worker=a.worker)
    assert got[f"{run}-2"]["parts"] == ["Hi NEWNAME"], got[f"{run}-2"]
    assert leadstub.calls_for(lead) == calls + (v is None), (
        leadstub.calls_for(lead), calls, v)
    return a


def test_stale_fill_after_invalidation_by_hand(pipeline, services, leadstub):
    r = services.redis()

    def invalidate(lead):
        # What a processed lead_updated does.
        r.incr(f"lead_ctx_ver:{lead}")
        r.delete(f"lead_ctx:{lead}")
    _stale_fill(pipeline, services, leadstub, invalidate)


def test_stale_fill_after_lead_updated(pipeline, services, leadstub):
    """The invalidation comes through the pipeline: a lead_updated webhook
    to a second ingest/worker pair on another topic."""
    b = Pair(pipeline, "b", leadstub)

    def invalidate(lead):
        post_lead_updated(b.ingest, lead)
    _stale_fill(pipeline, services, leadstub, invalidate)


def test_lead_updated_invalidates(pipeline, services, leadstub):
    inbox = add_inbox(services, uid("inbox-"))
    lead = f"{pipeline.prefix}upd"
    other = f"{pipeline.prefix}other"
    leadstub.set(lead, {"lead": {"name": "Before"}})
    leadstub.set(other, {"lead": {"name": "Other"}})
    worker = http_worker(pipeline, leadstub)
    ingest = campaign_ingest(pipeline)
    run = uid("run-")
    post_batch(ingest, batch(run, [msg(f"{run}-1", lead),
                                   msg(f"{run}-2", other)], inbox,
                             run_total=10))
    wait_rows(services, run, 2, worker=worker)
    r = services.redis()
    assert "Before" in (_redis_ctx(r, lead) or ""), _redis_ctx(r, lead)
    v0 = _ver(r, lead)
    v_other = _ver(r, other)

    leadstub.set(lead, {"lead": {"name": "After"}})
    post_lead_updated(ingest, lead)
    wait_until(lambda: _redis_ctx(r, lead) is None, 15,
               message=f"lead_ctx:{lead} to be deleted by lead_updated")
    pipeline.wait_caught_up()
    assert _ver(r, lead) == v0 + 1, (v0, _ver(r, lead))
    assert _redis_ctx(r, other) is not None, "another lead's context went"
    assert _ver(r, other) == v_other

    calls = leadstub.snapshot()["total"]
    post_batch(ingest, batch(run, [msg(f"{run}-3", lead),
                                   msg(f"{run}-4", other)], inbox,
                             run_total=10))
    got = wait_rows(services, run, 4, worker=worker)
    assert got[f"{run}-3"]["parts"] == ["Hi After"], got[f"{run}-3"]
    assert got[f"{run}-4"]["parts"] == ["Hi Other"], got[f"{run}-4"]
    assert leadstub.snapshot()["total"] == calls + 1, \
        "only the invalidated lead is fetched again"
    assert json.loads(_redis_ctx(r, lead))["lead"]["name"] == "After"


def test_redis_unresponsive_lookups_go_to_source(pipeline, services,
                                                 leadstub):
    """A Redis that accepts connections and never answers: the batch's
    reads, leases and fills time out (redis_timeout_ms), the leads go to
    the source, the batch commits."""
    import socket
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)             # handshakes complete; nothing is read
        port = hole.getsockname()[1]
        inbox = add_inbox(services, uid("inbox-"))
        leads = [f"{pipeline.prefix}H{i}" for i in range(20)]
        for i, lead in enumerate(leads):
            leadstub.set(lead, {"lead": {"name": f"H{i}"}})
        worker = http_worker(pipeline, leadstub,
                             redis_url=f"redis://127.0.0.1:{port}/0",
                             redis_timeout_ms=200)
        ingest = campaign_ingest(pipeline)
        run = uid("run-")
        t0 = time.monotonic()
        post_batch(ingest, batch(run, [msg(f"{run}-{i}", lead)
                                       for i, lead in enumerate(leads)],
                                 inbox))
        got = wait_rows(services, run, 20, timeout=30, worker=worker)
        elapsed = time.monotonic() - t0
        assert {r["status"] for r in got.values()} == {"ready"}, got
        assert all(leadstub.calls_for(lead) == 1 for lead in leads), \
            leadstub.snapshot()["calls"]
        c = counters(services, run)
        assert c["processed"] == 20 and c["status"] == "finished", c
        assert elapsed < 10, f"the batch took {elapsed:.1f} s"
        line = _line_with(worker, messages=20)
        assert line.get("redis_errors", 0) > 0, line["line"]
        pipeline.wait_caught_up()


def test_redis_restart_same_worker_resumes(pipeline, services, leadstub):
    """Redis restarts under a running worker: the invalidation owed while
    it was down (a lead_updated) is performed from the outbox without new
    traffic for that lead, and lead contexts are read from and cached in
    Redis again, all without restarting the worker."""
    inbox = add_inbox(services, uid("inbox-"))
    old = [f"{pipeline.prefix}O{i}" for i in range(5)]
    new = [f"{pipeline.prefix}N{i}" for i in range(5)]
    for i, lead in enumerate(old + new):
        leadstub.set(lead, {"lead": {"name": f"Before{i}"}})
    worker = http_worker(pipeline, leadstub)
    ingest = campaign_ingest(pipeline)
    run = uid("run-")
    post_batch(ingest, batch(run, [msg(f"{run}-a{i}", lead)
                                   for i, lead in enumerate(old)],
                             inbox, run_total=100))
    wait_rows(services, run, 5, worker=worker)
    r = services.redis()
    assert all(_redis_ctx(r, lead) for lead in old), "batch 1 not cached"
    v0 = _ver(r, old[0])

    # Down: SAVE first, so the cached contexts come back with Redis (a
    # real restart) and only the owed invalidation can remove old[0]'s.
    sentinel = f"sentinel:{pipeline.prefix}"
    r.set(sentinel, b"1")
    r.save()
    services.stop_redis()
    try:
        leadstub.set(old[0], {"lead": {"name": "After"}})
        post_lead_updated(ingest, old[0])
        post_batch(ingest, batch(run, [msg(f"{run}-b{i}", lead)
                                       for i, lead in enumerate(new)],
                                 inbox, run_total=100))
        wait_rows(services, run, 10, worker=worker)
        pipeline.wait_caught_up(timeout=30)
        owed = services.query(
            "SELECT u.k FROM sluice_owed_invalidations,"
            " unnest(keys) AS u(k) WHERE group_id = ANY(%s)",
            (pipeline.worker_groups(),))
        assert (f"lead_ctx:{old[0]}",) in owed, owed
    finally:
        services.start_redis()
    t_up = time.monotonic()
    r = services.redis()
    assert r.exists(sentinel), "the Redis dump was not reloaded"
    # The owed invalidation, performed by the same worker while idle.
    wait_until(lambda: _redis_ctx(r, old[0]) is None, 20,
               message=f"the owed invalidation of lead_ctx:{old[0]}",
               describe=lambda: f"worker log tail:\n{worker.log_tail(10)}")
    assert _ver(r, old[0]) == v0 + 1, (v0, _ver(r, old[0]))
    assert all(_redis_ctx(r, lead) for lead in old[1:]), \
        "other leads' contexts went"
    wait_until(lambda: not services.query(
        "SELECT 1 FROM sluice_owed_invalidations WHERE group_id = ANY(%s)",
        (pipeline.worker_groups(),)), 10, message="the outbox to empty")
    # The lead contexts' connection comes back on its first use after
    # its back-off, which never exceeds 5 s: past that, a batch must find
    # Redis (the bound is a guarantee of the design, not a guess).
    time.sleep(max(0.0, 5.5 - (time.monotonic() - t_up)))
    calls = leadstub.snapshot()["total"]
    n = _nlines(worker)
    post_batch(ingest, batch(run, [msg(f"{run}-c{i}", lead)
                                   for i, lead in enumerate(old + new)],
                             inbox, run_total=100))
    got = wait_rows(services, run, 20, worker=worker)
    assert got[f"{run}-c0"]["parts"] == ["Hi After"], got[f"{run}-c0"]
    line = _line_with(worker, skip=n, messages=10)
    # old[1:] from Redis; old[0] (invalidated) and new (not cached while
    # Redis was down) from the source, and cached again.
    for k, v in {"hits": 4, "misses": 6, "lookups": 6}.items():
        assert line.get(k) == v, f"{k}: want {v} in {line['line']!r}"
    assert line.get("redis_errors", 0) == 0, line["line"]
    assert leadstub.snapshot()["total"] == calls + 6
    assert all(_redis_ctx(r, lead) for lead in old + new), \
        "contexts not cached after the restart"
    # And read from there: no lookup at all.
    n = _nlines(worker)
    post_batch(ingest, batch(run, [msg(f"{run}-d{i}", lead)
                                   for i, lead in enumerate(old + new)],
                             inbox, run_total=100))
    wait_rows(services, run, 30, worker=worker)
    line = _line_with(worker, skip=n, messages=10)
    assert (line.get("hits"), line.get("lookups", 0)) == (10, 0), \
        line["line"]
    assert leadstub.snapshot()["total"] == calls + 6
    worker.assert_alive()
    r.delete(sentinel)


def test_lease_held_by_dead_worker(pipeline, services, leadstub):
    """Someone holds the lead's lease and never fills (a worker that died):
    the batch waits at most lead_context.lease_wait_ms, then fetches
    itself."""
    inbox = add_inbox(services, uid("inbox-"))
    lead = f"{pipeline.prefix}leased"
    leadstub.set(lead, {"lead": {"name": "Late"}})
    r = services.redis()
    r.set(f"lead_ctx_lock:{lead}", b"lease_of_a_dead_worker", px=30_000)
    try:
        worker = http_worker(pipeline, leadstub,
                             lead_context__lease_wait_ms=1500)
        ingest = campaign_ingest(pipeline)
        run = uid("run-")
        t0 = time.monotonic()
        post_batch(ingest, batch(run, [msg(f"{run}-0", lead)], inbox))
        got = wait_rows(services, run, 1, timeout=30, worker=worker)
        elapsed = time.monotonic() - t0
        assert [(x["status"], x["parts"]) for x in got.values()] == [
            ("ready", ["Hi Late"])], got
        assert leadstub.calls_for(lead) == 1
        assert 1.2 <= elapsed < 8, (
            f"{elapsed:.1f} s: want about lease_wait_ms (1.5 s) of waiting, "
            "then a fetch")
        line = _line_with(worker, messages=1)
        assert line.get("lease_waits") == 1, line["line"]
        # The worker did not take over (or delete) someone else's lease.
        assert r.get(f"lead_ctx_lock:{lead}") == b"lease_of_a_dead_worker"
    finally:
        r.delete(f"lead_ctx_lock:{lead}")
