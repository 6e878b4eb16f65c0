# Cache invalidation after commit: the conversation's keys go, nobody
# else's; Redis being down delays invalidation, never the data.

import socket

from harness import existing_keys as _existing
from harness import populate_keys as _populate
from harness import post_and_land, stop_redis_keeping, transcript, wait_until


def _check_invalidation(pipeline, services, cid, other, extra=0):
    r = services.redis()
    mine = _populate(r, cid, extra=extra)
    theirs = _populate(r, other, extra=extra)
    # Not a conversation key, and not the other conversation's either.
    bystanders = [f"messages:{cid}", f"conversations:{cid}",
                  f"messages:{cid}x:1:50", f"xmessages:{cid}:1:50"]
    for k in bystanders:
        r.set(k, b"keep")

    r202 = pipeline.ingest.post(transcript(cid, [("user", "Hi"),
                                                 ("assistant", "Hello!")]))
    assert r202.status == 202, r202
    wait_until(lambda: pipeline.message_count(cid) == 2, 30,
               message=f"2 messages of {cid} in PostgreSQL",
               describe=lambda: f"{pipeline.message_count(cid)} messages")
    wait_until(lambda: not _existing(r, mine), 10,
               message=f"the {len(mine)} cached keys of {cid} to be deleted",
               describe=lambda: f"still there: {_existing(r, mine)[:8]}")
    gone = sorted(set(theirs) - set(_existing(r, theirs)))
    assert not gone, f"keys of another conversation were deleted: {gone[:10]}"
    gone = sorted(set(bystanders) - set(_existing(r, bystanders)))
    assert not gone, f"keys outside the patterns were deleted: {gone}"


def test_invalidation_after_commit(pipeline, services):
    pipeline.start_worker()
    pipeline.start_ingest()
    _check_invalidation(pipeline, services, pipeline.cid("a"),
                        pipeline.cid("b"))


def test_invalidation_scans_whole_keyspace(pipeline, services):
    """Thousands of keys: the SCAN has to follow its cursor to the end."""
    pipeline.start_worker()
    pipeline.start_ingest()
    _check_invalidation(pipeline, services, pipeline.cid("many"),
                        pipeline.cid("many-other"), extra=3000)


def test_glob_characters_in_conversation_id(pipeline, services):
    """A conversation id holding glob characters must not widen the SCAN
    pattern to other conversations' keys."""
    pipeline.start_worker()
    pipeline.start_ingest()
    base = pipeline.cid("g")
    # Unescaped, "messages:<base>*:*" would also match <base>-other's keys,
    # and "messages:<base>[ab]:*" would match <base>a's.
    _check_invalidation(pipeline, services, base + "*", base + "-other")
    _check_invalidation(pipeline, services, base + "[ab]", base + "a")
    _check_invalidation(pipeline, services, base + "?", base + "Z")


def test_redis_down_data_still_lands(pipeline):
    with socket.socket() as s:      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    pipeline.start_worker(redis_url=f"redis://127.0.0.1:{closed}/0",
                          redis_timeout_ms=200)
    pipeline.start_ingest()
    cids = [pipeline.cid(f"r{i}") for i in range(5)]
    for c in cids:
        r = pipeline.ingest.post(transcript(c, [("user", "Hi"),
                                                ("assistant", "Hello!")]))
        assert r.status == 202, r
    wait_until(lambda: pipeline.message_count() == 10, 60,
               message="10 messages in PostgreSQL with Redis unreachable",
               describe=lambda: f"{pipeline.message_count()} messages")
    pipeline.wait_caught_up()
    for c in cids:
        conv = pipeline.conversation(c)
        assert conv and conv["transcript_received"], conv


def test_redis_unresponsive_data_still_lands(pipeline):
    """A Redis that accepts connections and never answers: each attempt is
    bounded by redis_timeout_ms, so batches keep committing."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)             # handshakes complete; nothing is read
        port = hole.getsockname()[1]
        pipeline.start_worker(redis_url=f"redis://127.0.0.1:{port}/0",
                              redis_timeout_ms=200)
        pipeline.start_ingest()
        cids = [pipeline.cid(f"h{i}") for i in range(5)]
        for c in cids:
            r = pipeline.ingest.post(transcript(c, [("user", "Hi")]))
            assert r.status == 202, r
            # One at a time: five batches, five invalidations to time out.
            wait_until(lambda: pipeline.message_count(c) == 1, 30,
                       message=f"{c} to land with Redis unresponsive")
        pipeline.wait_caught_up()


def test_redis_restart(pipeline, services):
    """Redis goes away and comes back: data lands meanwhile, and the
    worker reconnects and invalidates again."""
    pipeline.start_worker(redis_timeout_ms=200)
    pipeline.start_ingest()

    def check_gone(cid):
        r = services.redis()
        keys = _populate(r, cid)
        post_and_land(pipeline, cid)
        wait_until(lambda: not _existing(r, keys), 10,
                   message=f"the cached keys of {cid} to be deleted",
                   describe=lambda: f"still there: {_existing(r, keys)[:5]}")

    check_gone(pipeline.cid("before"))

    # Keys cached for two conversations survive the Redis restart (SAVE,
    # then reloaded from the dump); their invalidation is due while Redis is
    # down and has to happen once it is back.
    during = [pipeline.cid("during"), pipeline.cid("during2")]
    r = services.redis()
    stale = [k for c in during for k in _populate(r, c)]
    sentinel = stop_redis_keeping(services, r, pipeline.prefix)
    try:
        for c in during:
            post_and_land(pipeline, c)
    finally:
        services.start_redis()
    r = services.redis()
    assert r.exists(sentinel), "the Redis dump was not reloaded"
    wait_until(lambda: not _existing(r, stale), 15,
               message="the invalidations deferred while Redis was down",
               describe=lambda: f"still there: {_existing(r, stale)[:5]}")
    r.delete(sentinel)

    # And it goes on invalidating as usual.
    check_gone(pipeline.cid("after"))


def _post_all(pipeline, cids):
    for c in cids:
        r = pipeline.ingest.post(transcript(c, [("user", "Hi")]))
        assert r.status == 202, r


def test_one_walk_of_the_keyspace_for_many_conversations(pipeline, services):
    """A batch of several conversations walks Redis's keyspace once (one
    script step per SCAN step), not once per conversation; each
    conversation's keys go, and a conversation whose id merely starts with
    another's keeps its own."""
    r = services.redis()
    base = pipeline.cid("w")
    cids = [base + s for s in ("a", "ab", "abc", "b", "b*", "long-" * 8)]
    mine = [k for c in cids for k in _populate(r, c, extra=200)]
    bystanders = [k for c in (base + "abcd", base + "c", base + "b-")
                  for k in _populate(r, c)]
    pipeline.start_ingest()
    _post_all(pipeline, cids)           # all waiting before the worker reads
    r.config_resetstat()
    pipeline.start_worker()
    wait_until(lambda: pipeline.message_count() == len(cids), 30,
               message=f"{len(cids)} messages in PostgreSQL")
    wait_until(lambda: not _existing(r, mine), 10,
               message="every cached key of the conversations to be deleted",
               describe=lambda: f"still there: {_existing(r, mine)[:8]}")
    gone = sorted(set(bystanders) - set(_existing(r, bystanders)))
    assert not gone, f"keys of other conversations were deleted: {gone[:10]}"
    stats = r.info("commandstats")
    scans = stats.get("cmdstat_scan", {}).get("calls", 0)
    evals = stats.get("cmdstat_eval", {}).get("calls", 0)
    assert evals >= 1, stats
    assert scans == evals, (
        f"{scans} SCANs for {evals} script steps: the keyspace was walked "
        f"more than once")
    assert "cmdstat_keys" not in stats, stats["cmdstat_keys"]


def test_scripting_refused_falls_back_to_a_scan_per_pattern(pipeline,
                                                            services):
    """A Redis user that may not run scripts: the worker says so once,
    the invalidation stays owed, and it goes pattern by pattern after."""
    r = services.redis()
    user = f"noscript-{pipeline.prefix}".replace(":", "-")
    r.acl_setuser(user, enabled=True, passwords=["+s3cret-pw"], keys=["*"],
                  channels=["*"], commands=["+@all", "-@scripting"])
    try:
        url = services.redis_url.replace("redis://", f"redis://{user}:s3cret-pw@")
        cids = [pipeline.cid("n1"), pipeline.cid("n2")]
        mine = [k for c in cids for k in _populate(r, c)]
        pipeline.start_ingest()
        _post_all(pipeline, cids)
        pipeline.start_worker(redis_url=url, redis_timeout_ms=500)
        wait_until(lambda: pipeline.message_count() == len(cids), 30,
                   message=f"{len(cids)} messages in PostgreSQL")
        wait_until(lambda: not _existing(r, mine), 20,
                   message="the keys to be deleted by per-pattern SCANs",
                   describe=lambda: f"still there: {_existing(r, mine)[:8]}"
                   f"; worker log:\n{pipeline.worker.log_tail(10)}")
        log = pipeline.worker.log_text()
        assert log.count("merged SCAN refused") == 1, log[-3000:]
        assert "s3cret-pw" not in log
    finally:
        r.acl_deluser(user)
