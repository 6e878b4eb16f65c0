# Owed invalidations are durable: the keys a batch invalidates are written
# to sluice_owed_invalidations in the batch's own transaction and deleted
# once Redis confirms them. What Redis could not take (it was down) survives
# a kill -9 of the worker and is performed by the next owner of the
# partitions, without new traffic for those conversations.
#
# Stops and starts Redis: run it without SLUICE_TEST_SERVICES_DIR (a private
# stack).

import re
import time

from harness import existing_keys as _existing
from harness import (populate_keys, post_and_land, stop_redis_keeping, transcript,
                     wait_until)

# Static membership: a restarted worker takes the killed one's place at
# once instead of waiting for its session to time out.
def _crash_tuning(pipeline):
    return {"kafka__group.instance.id": f"{pipeline.group}-w",
            "kafka__session.timeout.ms": 6000,
            "kafka__heartbeat.interval.ms": 1000}


def _populate(r, cid):
    return populate_keys(r, cid, pages=5)


def _owed(pipeline):
    """The worker's owed keys in the outbox (a row per batch, of any of
    its pipelines' groups):
    [(key, op, partitions)]."""
    return pipeline.services.query(
        "SELECT u.k, u.o, partitions FROM sluice_owed_invalidations,"
        " unnest(keys, ops) AS u(k, o)"
        " WHERE group_id = ANY(%s) AND topic = %s ORDER BY id",
        (pipeline.worker_groups(), pipeline.topic))


def _owed_ids_issued(pipeline):
    return pipeline.services.scalar(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END"
        " FROM sluice_owed_invalidations_id_seq")


def _wait_outbox_empty(pipeline, timeout=10):
    wait_until(lambda: not _owed(pipeline), timeout,
               message="the outbox of the group to be empty",
               describe=lambda: f"{len(_owed(pipeline))} rows left, e.g. "
               f"{_owed(pipeline)[:3]}")


def test_outbox_empty_with_redis_up(pipeline, services):
    """Every batch writes its keys to the outbox and they are deleted once
    Redis confirmed them: nothing is left behind, batch after batch."""
    pipeline.start_worker()
    pipeline.start_ingest()
    r = services.redis()
    before = _owed_ids_issued(pipeline)
    cids = [pipeline.cid(f"up{i}") for i in range(5)]
    for cid in cids:            # one batch each
        keys = _populate(r, cid)
        post_and_land(pipeline, cid)
        wait_until(lambda: not _existing(r, keys), 10,
                   message=f"the cached keys of {cid} to be deleted")
        _wait_outbox_empty(pipeline, 5)
    # And a burst: batches delete the previous batch's rows in their own
    # transaction; the last ones go once the worker is idle.
    burst = [pipeline.cid(f"burst{i}") for i in range(60)]
    for cid in burst:
        assert pipeline.ingest.post(
            transcript(cid, [("user", "Hi")])).status == 202
    wait_until(lambda: pipeline.message_count() == 2 * len(cids) + len(burst),
               30, message="the burst to land")
    pipeline.wait_caught_up()
    _wait_outbox_empty(pipeline, 5)
    # The rows were written (one per batch), not skipped.
    issued = _owed_ids_issued(pipeline) - before
    assert issued >= len(cids) + 1, (
        f"only {issued} outbox rows were written for at least "
        f"{len(cids) + 1} batches")
    pipeline.worker.assert_alive()


def test_owed_performed_when_redis_returns(pipeline, services):
    """Redis down, then back, same worker: the rows owed meanwhile are
    performed from the outbox (no new traffic for those conversations)
    and deleted."""
    pipeline.start_worker(redis_timeout_ms=200)
    pipeline.start_ingest()
    r = services.redis()
    # One batch each: more than one page (ten batches) of the catch-up.
    during = [pipeline.cid(f"d{i}") for i in range(12)]
    stale = [k for c in during for k in _populate(r, c)]
    sentinel = stop_redis_keeping(services, r, stale[0])
    try:
        for cid in during:
            post_and_land(pipeline, cid)
        owed = _owed(pipeline)
        assert {k for k, _, _ in owed} >= {
            f"conversation:{c}" for c in during}, owed
        assert {op for _, op, _ in owed} == {"key", "pattern"}, owed
    finally:
        services.start_redis()
    r = services.redis()
    assert r.exists(sentinel), "the Redis dump was not reloaded"
    wait_until(lambda: not _existing(r, stale), 20,
               message="the invalidations owed while Redis was down",
               describe=lambda: f"still there: {_existing(r, stale)[:5]}; "
               f"worker log tail:\n{pipeline.worker.log_tail(10)}")
    _wait_outbox_empty(pipeline)
    pipeline.worker.wait_log(r"performed \d+ owed invalidations", timeout=5)
    # And it goes on as usual.
    after = pipeline.cid("after")
    keys = _populate(r, after)
    post_and_land(pipeline, after)
    wait_until(lambda: not _existing(r, keys), 10,
               message=f"the cached keys of {after} to be deleted")
    _wait_outbox_empty(pipeline, 5)
    r.delete(sentinel)


def test_owed_survive_kill_9(pipeline, services):
    """Redis down, rows land, the worker is killed before Redis returns:
    a new worker performs what the dead one owed, with no new traffic for
    those conversations, and the outbox ends empty."""
    worker = pipeline.start_worker(redis_timeout_ms=200,
                                   **_crash_tuning(pipeline))
    pipeline.start_ingest()
    r = services.redis()
    cids = [pipeline.cid(f"k{i}") for i in range(6)]
    stale = [k for c in cids for k in _populate(r, c)]
    bystander = f"messages:{pipeline.prefix}other:1:50"
    r.set(bystander, b"keep")
    sentinel = stop_redis_keeping(services, r, stale[0])
    try:
        for cid in cids:
            post_and_land(pipeline, cid)
        pipeline.wait_caught_up()
        owed = _owed(pipeline)
        assert {f"conversation:{c}" for c in cids} <= {
            k for k, _, _ in owed}, owed
        worker.kill9()
    finally:
        services.start_redis()
    r = services.redis()
    assert r.exists(sentinel), "the Redis dump was not reloaded"
    # Nobody performed them yet: the dead worker owed them.
    assert len(_existing(r, stale)) == len(stale)
    time.sleep(0.5)
    pipeline.restart(worker)
    wait_until(lambda: not _existing(r, stale), 30,
               message="the dead worker's owed invalidations",
               describe=lambda: f"still there: {_existing(r, stale)[:5]}; "
               f"worker log tail:\n{worker.log_tail(10)}")
    _wait_outbox_empty(pipeline)
    assert r.exists(bystander), "a key outside the patterns was deleted"
    # No new record was consumed: the offsets stayed where the dead
    # worker left them, and no message is doubled.
    assert not pipeline.duplicates()
    assert pipeline.message_count() == 2 * len(cids)
    r.delete(sentinel, bystander)


def test_replay_owes_while_redis_is_down(pipeline, services):
    """A replay that ends while Redis is down says what it still owes;
    run again with its group once Redis answers, it performs them."""
    import subprocess

    from harness import BUILD_DIR

    pipeline.start_worker()
    pipeline.start_ingest()
    cids = [pipeline.cid(f"rp{i}") for i in range(4)]
    for cid in cids:
        post_and_land(pipeline, cid)
    pipeline.wait_caught_up()
    group = f"{pipeline.group}-rp"
    cfg = pipeline._write("replay.conf", pipeline.worker_settings(
        redis_timeout_ms=200))

    def replay():
        return subprocess.run(
            [str(BUILD_DIR / "sluice-worker"), "replay", "-c", str(cfg),
             "--from", "1970-01-01T00:00:00Z", "--group", group],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=120, env=pipeline.env)

    def owed():
        return services.query(
            "SELECT u.k FROM sluice_owed_invalidations,"
            " unnest(keys) AS u(k) WHERE group_id = %s", (group,))

    r = services.redis()
    stale = [k for c in cids for k in _populate(r, c)]
    sentinel = stop_redis_keeping(services, r, stale[0])
    try:
        first = replay()
        assert first.returncode == 0, first.stderr[-3000:]
        assert re.search(r"\d+ invalidations are still owed to Redis under "
                         rf"group {group}", first.stderr), first.stderr[-2000:]
        assert {f"conversation:{c}" for c in cids} <= {k for (k,) in owed()}
    finally:
        services.start_redis()
    r = services.redis()
    assert r.exists(sentinel), "the Redis dump was not reloaded"
    assert len(_existing(r, stale)) == len(stale)
    second = replay()
    assert second.returncode == 0, second.stderr[-3000:]
    assert "still owed" not in second.stderr, second.stderr[-2000:]
    assert not _existing(r, stale), _existing(r, stale)
    assert not owed()
    # A replay over the full database doubled nothing.
    assert not pipeline.duplicates()
    assert pipeline.message_count() == 2 * len(cids)
    r.delete(sentinel)
