# A batch whose offsets PostgreSQL refuses at the end of its transaction
# (the upsert of the next offsets and COMMIT go in one round trip): the
# COMMIT is skipped with it, so none of the batch's rows land; the worker
# rolls back, retries with backoff on the same connection, and once the
# offsets are accepted again every row lands once.

import time

from harness import transcript, wait_until

N = 20


def test_offsets_refused_then_accepted(pipeline, services):
    group = f"{pipeline.group}.transcript"
    fn, trig = f"block_{pipeline.group}"[:60], f"block_{pipeline.group}"[:60]
    pipeline.start_worker(retry_backoff_min_ms=50, retry_backoff_max_ms=500)
    ingest = pipeline.start_ingest()
    first = pipeline.cid("first")
    assert ingest.post(transcript(first, [("user", "hi")])).status == 202
    wait_until(lambda: pipeline.message_count(first) == 1, 30,
               message="the first message to land")

    # A refusal that is not a data error (SQLSTATE 55000, not class 22 or
    # 23), so the batch is retried as it is rather than bisected. The
    # placeholder rows (-1) pass, only real offsets are refused.
    services.query(
        f'CREATE FUNCTION "{fn}"() RETURNS trigger LANGUAGE plpgsql AS $$'
        " BEGIN RAISE EXCEPTION 'offsets refused by the test'"
        " USING ERRCODE = '55000'; END $$")
    services.query(
        f'CREATE TRIGGER "{trig}" BEFORE INSERT OR UPDATE ON sluice_offsets'
        f" FOR EACH ROW WHEN (NEW.group_id = '{group}' AND"
        f' NEW.next_offset >= 0) EXECUTE FUNCTION "{fn}"()')
    cids = [pipeline.cid(f"r{i}") for i in range(N)]
    try:
        for i, c in enumerate(cids):
            r = ingest.post(transcript(c, [(f"{c}-1", "user", f"q{i}"),
                                           (f"{c}-2", "assistant", f"a{i}")]))
            assert r.status == 202
        wait_until(lambda: "offsets refused by the test" in
                   pipeline.worker.log_text(), 30,
                   message="the worker to meet the refusal")
        time.sleep(1)  # a few more retries, each refused
        pipeline.worker.assert_alive()
        landed = [c for c in cids if pipeline.message_count(c) > 0]
        assert not landed, \
            f"rows committed while their offsets were refused: {landed[:5]}"
    finally:
        services.query(f'DROP TRIGGER IF EXISTS "{trig}" ON sluice_offsets')
        services.query(f'DROP FUNCTION IF EXISTS "{fn}"()')

    wait_until(lambda: pipeline.message_count() == 2 * N + 1, 30, 0.25,
               message=f"{2 * N + 1} messages once the offsets are accepted",
               describe=lambda: f"{pipeline.message_count()} messages; "
               f"worker log tail:\n{pipeline.worker.log_tail(10)}")
    pipeline.wait_caught_up()
    assert not pipeline.duplicates()
    missing = [c for c in cids if pipeline.message_count(c) != 2]
    assert not missing, f"conversations without their 2 rows: {missing[:5]}"
    assert services.dlq_count(pipeline.topic) == 0
