# The invalidation modes whose cost is the conversation's keys, not the
# keyspace (docs/caching.md): generation counters INCRed after the commit,
# and key-index sets whose members are removed. Each removes exactly the
# conversation's (or run's) keys and leaves everyone else's; both go
# through the outbox of owed invalidations like SCAN's patterns, so Redis
# down during the commit, or a kill -9 before Redis answers, loses none.
#
# Stops and starts Redis: run it without SLUICE_TEST_SERVICES_DIR (a private
# stack).

import os
import signal
import threading
import time

from campaign_util import (Pair, add_inbox, add_lead, batch, msg, post_batch,
                           uid, wait_rows)
from harness import (existing_keys, populate_keys, post_and_land, stop_redis_keeping,
                     wait_until)

GEN = "cache_gen:conversation:{conversation_id}"
IDX = "sluice:keys:conversation:{conversation_id}"


def _gen(cid):
    return GEN.replace("{conversation_id}", cid)


def _idx(cid):
    return IDX.replace("{conversation_id}", cid)


def _fill_indexed(r, cid, n=10):
    """n cache entries of cid as an application in index mode fills them:
    SET the key, SADD it to the conversation's index. Returns the keys."""
    keys = [f"page:{cid}:{i}" for i in range(n)]
    with r.pipeline(transaction=False) as p:
        for k in keys:
            p.set(k, b"cached", ex=600)
        for i in range(0, n, 1000):
            p.sadd(_idx(cid), *keys[i:i + 1000])
        p.execute()
    return keys


class _Monitor:
    """The commands Redis runs from now on (MONITOR, on a thread): what the
    worker sent, in order, each as its list of words."""

    def __init__(self, r):
        self.m = r.monitor()
        self.m.__enter__()
        self.cmds = []
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            while True:
                self.cmds.append(self.m.next_command()["command"].split())
        except Exception:   # the connection closed by stop()
            pass

    def stop(self):
        time.sleep(0.2)     # the last replies' commands are echoed too
        self.m.connection.disconnect()
        self.t.join(5)
        return self.cmds


def _owed_ops(pipeline):
    return {op for (op,) in pipeline.services.query(
        "SELECT DISTINCT u.o FROM sluice_owed_invalidations,"
        " unnest(ops) AS u(o) WHERE group_id = ANY(%s) AND topic = %s",
        (pipeline.worker_groups(), pipeline.topic))}


def _owed_keys(pipeline):
    return {k for (k,) in pipeline.services.query(
        "SELECT u.k FROM sluice_owed_invalidations, unnest(keys) AS u(k)"
        " WHERE group_id = ANY(%s) AND topic = %s",
        (pipeline.worker_groups(), pipeline.topic))}


def test_generation_bumped_and_modes_logged(pipeline, services):
    """A generation is INCRed once per commit that touches its
    conversation, has no TTL, and nobody else's moves; SCAN templates still
    work beside it. The start-up log tells each template's mode once."""
    worker = pipeline.start_worker(invalidate_keys="messages:{conversation_id}:*",
                                   invalidate_generation=GEN)
    pipeline.start_ingest()
    r = services.redis()
    cid, other, fresh = (pipeline.cid("g"), pipeline.cid("g-other"),
                         pipeline.cid("g-fresh"))
    r.set(_gen(cid), 5)
    r.set(_gen(other), 7)
    pages = populate_keys(r, cid, pages=3)
    scanned = [k for k in pages if k.startswith("messages:")]
    post_and_land(pipeline, cid)
    post_and_land(pipeline, fresh)
    wait_until(lambda: r.get(_gen(fresh)) == b"1", 10,
               message=f"{_gen(fresh)} to be created at 1",
               describe=lambda: f"it is {r.get(_gen(fresh))}")
    assert r.get(_gen(cid)) == b"6", r.get(_gen(cid))
    assert r.get(_gen(other)) == b"7", "another conversation's generation moved"
    assert r.ttl(_gen(cid)) == -1 and r.ttl(_gen(fresh)) == -1, \
        "a generation counter expires"
    assert not existing_keys(r, scanned), "the SCAN template stopped working"
    # conversation:{cid} is not a template any more: it stays.
    assert r.exists(f"conversation:{cid}")
    log = worker.log_text()
    assert log.count(f"cache: {GEN} by generation") == 1, log[-3000:]
    assert log.count("cache: messages:{conversation_id}:* by SCAN (walks the "
                     "keyspace per batch; see docs/caching.md)") == 1, \
        log[-3000:]
    r.delete(_gen(cid), _gen(other), _gen(fresh), f"conversation:{cid}")


def test_index_removes_exactly_the_members(pipeline, services):
    """The index's members go and leave the set; another conversation's
    index and keys stay, and so does a key of the conversation nobody
    indexed (no SCAN ran). A set of thousands of members (read in SSCAN
    steps, removed in chunks) goes whole."""
    worker = pipeline.start_worker(invalidate_keys="",
                                   invalidate_index=IDX)
    pipeline.start_ingest()
    r = services.redis()
    cid, big, other = (pipeline.cid("i"), pipeline.cid("i-big"),
                       pipeline.cid("i-other"))
    mine = _fill_indexed(r, cid)
    many = _fill_indexed(r, big, n=5000)
    theirs = _fill_indexed(r, other)
    unindexed = f"page:{cid}:unindexed"
    r.set(unindexed, b"keep")
    mon = _Monitor(r)
    try:
        post_and_land(pipeline, cid)
        post_and_land(pipeline, big)
        for keys, c in ((mine, cid), (many, big)):
            wait_until(lambda: not existing_keys(r, keys), 10,
                       message=f"the indexed keys of {c} to be removed",
                       describe=lambda: f"{len(existing_keys(r, keys))} left")
            assert r.scard(_idx(c)) == 0, f"{r.scard(_idx(c))} members left"
    finally:
        cmds = mon.stop()
    # Exactly the members read leave the set (never a DEL of the set: a key
    # indexed meanwhile must stay indexed), in one MULTI/EXEC, no walk of
    # the keyspace, no script, at most 512 keys a command.
    words = [c[0].upper() for c in cmds]
    assert not {"SCAN", "KEYS", "EVAL", "EVALSHA", "DEL"} & set(words), \
        sorted(set(words))
    for c in (cid, big):
        srem = [i for i, w in enumerate(cmds)
                if w[0].upper() == "SREM" and w[1] == _idx(c)]
        unlink = [i for i, w in enumerate(cmds) if w[0].upper() == "UNLINK"
                  and any(x.startswith(f"page:{c}:") for x in w[1:])]
        assert srem and unlink, cmds[-20:]
        # The two in one MULTI/EXEC: a connection lost between them must
        # not leave keys cached but out of the set.
        first, last = min(srem + unlink), max(srem + unlink)
        multi = [i for i, w in enumerate(cmds[:first]) if w[0].upper() == "MULTI"]
        execs = [i for i, w in enumerate(cmds) if w[0].upper() == "EXEC"]
        assert multi, "SREM and UNLINK outside a transaction"
        between = [i for i in execs if multi[-1] < i < first]
        assert not between and any(i > last for i in execs), \
            "SREM and UNLINK not in one MULTI/EXEC"
        assert not any(_idx(c) in cmds[i] for i in unlink), \
            "the index set itself was unlinked"
        assert unindexed not in sum((cmds[i] for i in unlink), [])
        assert max(len(cmds[i]) - 1 for i in unlink) <= 512
    assert len(existing_keys(r, theirs)) == len(theirs), \
        "another conversation's keys were removed"
    assert r.scard(_idx(other)) == len(theirs), "another index was purged"
    assert r.exists(unindexed), "a key nobody indexed was removed"
    assert f"cache: {IDX} by key index" in worker.log_text()
    r.delete(unindexed, _idx(other), *theirs)


def _modes_worker(pipeline, redis_timeout_ms=200):
    # Static membership: a restarted worker takes the killed one's place at
    # once instead of waiting for its session to time out.
    return pipeline.start_worker(
        invalidate_keys="", invalidate_generation=GEN, invalidate_index=IDX,
        redis_timeout_ms=redis_timeout_ms,
        **{"kafka__group.instance.id": f"{pipeline.group}-w",
           "kafka__session.timeout.ms": 6000,
           "kafka__heartbeat.interval.ms": 1000})


def _seed(r, cids):
    """Generation 3 and ten indexed keys for each conversation."""
    keys = []
    for c in cids:
        r.set(_gen(c), 3)
        keys += _fill_indexed(r, c)
    return keys


def test_owed_when_redis_returns(pipeline, services):
    """Redis down during the commits, then back, same worker: the bumps and
    purges are owed in the outbox (ops gen and index) and performed once
    Redis answers, with no new traffic for those conversations."""
    worker = _modes_worker(pipeline)
    pipeline.start_ingest()
    r = services.redis()
    cids = [pipeline.cid(f"d{i}") for i in range(3)]
    stale = _seed(r, cids)
    bystander = pipeline.cid("d-other")
    theirs = _seed(r, [bystander])
    sentinel = stop_redis_keeping(services, r, cids[0])
    try:
        for c in cids:
            post_and_land(pipeline, c)
        assert _owed_ops(pipeline) == {"gen", "index"}
        assert {_gen(c) for c in cids} | {_idx(c) for c in cids} <= \
            _owed_keys(pipeline)
    finally:
        services.start_redis()
    r = services.redis()
    assert r.exists(sentinel), "the Redis dump was not reloaded"
    wait_until(lambda: not existing_keys(r, stale), 20,
               message="the index purges owed while Redis was down",
               describe=lambda: f"{len(existing_keys(r, stale))} left; worker "
               f"log tail:\n{worker.log_tail(10)}")
    wait_until(lambda: not _owed_keys(pipeline), 10,
               message="the outbox to be empty")
    # Each conversation was in one batch: one bump, performed once.
    assert [r.get(_gen(c)) for c in cids] == [b"4"] * len(cids)
    assert r.get(_gen(bystander)) == b"3"
    assert len(existing_keys(r, theirs)) == len(theirs)
    r.delete(sentinel, _gen(bystander), _idx(bystander), *theirs,
             *[_gen(c) for c in cids])


def test_owed_survive_kill_9(pipeline, services):
    """Redis down, the batches commit, the worker is killed -9 before Redis
    returns: the restarted worker bumps and purges what the dead one owed,
    and the outbox ends empty."""
    worker = _modes_worker(pipeline)
    pipeline.start_ingest()
    r = services.redis()
    cids = [pipeline.cid(f"k{i}") for i in range(3)]
    stale = _seed(r, cids)
    sentinel = stop_redis_keeping(services, r, cids[0])
    try:
        for c in cids:
            post_and_land(pipeline, c)
        pipeline.wait_caught_up()
        assert {_gen(c) for c in cids} <= _owed_keys(pipeline)
        worker.kill9()
    finally:
        services.start_redis()
    r = services.redis()
    assert r.exists(sentinel), "the Redis dump was not reloaded"
    # Nobody performed them yet: the dead worker owed them.
    assert len(existing_keys(r, stale)) == len(stale)
    assert [r.get(_gen(c)) for c in cids] == [b"3"] * len(cids)
    time.sleep(0.5)
    pipeline.restart(worker)
    wait_until(lambda: not existing_keys(r, stale), 30,
               message="the dead worker's owed index purges",
               describe=lambda: f"{len(existing_keys(r, stale))} left; worker "
               f"log tail:\n{worker.log_tail(10)}")
    wait_until(lambda: not _owed_keys(pipeline), 10,
               message="the outbox to be empty")
    # Performed at least once (twice is harmless: a generation only grows).
    assert all(int(r.get(_gen(c))) >= 4 for c in cids), \
        [r.get(_gen(c)) for c in cids]
    assert not pipeline.duplicates()
    assert pipeline.message_count() == 2 * len(cids)
    r.delete(sentinel, *[_gen(c) for c in cids])


def test_kill_9_between_commit_and_invalidation(pipeline, services):
    """The batch has committed and its invalidation is on the wire to a
    Redis that does not answer (stopped with SIGSTOP) when the worker is
    killed -9. Whatever Redis did with the dead worker's commands once it
    runs again, the restarted worker performs the row: the indexed keys go,
    the generation has moved (at least once: twice is harmless)."""
    worker = _modes_worker(pipeline, redis_timeout_ms=20000)
    pipeline.start_ingest()
    r = services.redis()
    post_and_land(pipeline, pipeline.cid("warm"))   # joined, caught up
    cid = pipeline.cid("between")
    stale = _seed(r, [cid])
    pid = r.info("server")["process_id"]
    os.kill(pid, signal.SIGSTOP)
    try:
        post_and_land(pipeline, cid)
        assert {_gen(cid), _idx(cid)} <= _owed_keys(pipeline)
        time.sleep(0.3)
        # Still waiting on Redis (20 s), not given up.
        assert "invalidation not confirmed" not in worker.log_text()
        worker.kill9()
    finally:
        os.kill(pid, signal.SIGCONT)
    time.sleep(0.5)
    # The dead worker never got the SSCAN's answer: no purge happened.
    assert len(existing_keys(r, stale)) == len(stale)
    assert {_idx(cid)} <= _owed_keys(pipeline)
    pipeline.restart(worker)
    wait_until(lambda: not existing_keys(r, stale), 30,
               message="the dead worker's owed index purge",
               describe=lambda: f"{len(existing_keys(r, stale))} left; worker "
               f"log tail:\n{worker.log_tail(10)}")
    wait_until(lambda: not _owed_keys(pipeline), 10,
               message="the outbox to be empty")
    assert int(r.get(_gen(cid))) >= 4, r.get(_gen(cid))
    assert r.scard(_idx(cid)) == 0
    assert not pipeline.duplicates()
    r.delete(_gen(cid))


def test_campaign_generation_and_index(pipeline, services):
    """The campaign twins: the run's generation moves by one and its
    indexed keys go; another run's stay."""
    pair = Pair(pipeline, "cm", worker_over={
        "lead_context__source": "postgres",
        "campaign_invalidate_keys": "",
        "campaign_invalidate_generation": "cache_gen:campaign_run:{run_id}",
        "campaign_invalidate_index": "sluice:keys:campaign_run:{run_id}"})
    r = services.redis()
    inbox = add_inbox(services, uid("inbox-"))
    lead = add_lead(services, uid(f"{pipeline.prefix}lead-"), "Kay")
    run, other = uid("run-"), uid("run-other-")
    mine, theirs = [f"run:{run}:{i}" for i in range(5)], [f"run:{other}:0"]
    for rid, keys in ((run, mine), (other, theirs)):
        r.set(f"cache_gen:campaign_run:{rid}", 2)
        for k in keys:
            r.set(k, b"cached", ex=600)
        r.sadd(f"sluice:keys:campaign_run:{rid}", *keys)
    post_batch(pair.ingest, batch(run, [msg(f"{run}-0", lead)], inbox))
    wait_rows(services, run, 1, worker=pair.worker)
    wait_until(lambda: not existing_keys(r, mine), 10,
               message=f"the indexed keys of {run} to be removed")
    wait_until(lambda: r.get(f"cache_gen:campaign_run:{run}") == b"3", 10,
               message="the run's generation to move by one",
               describe=lambda: f"{r.get(f'cache_gen:campaign_run:{run}')}")
    assert r.get(f"cache_gen:campaign_run:{other}") == b"2"
    assert existing_keys(r, theirs) == theirs
    log = pair.worker.log_text()
    assert "cache: cache_gen:campaign_run:{run_id} by generation" in log
    assert "cache: sluice:keys:campaign_run:{run_id} by key index" in log
    r.delete(f"cache_gen:campaign_run:{run}", f"cache_gen:campaign_run:{other}",
             f"sluice:keys:campaign_run:{other}", *theirs)
