# kill -9 of the worker in the middle of a campaign run: rows, counters and
# offsets commit together, so after restarts every message is there once,
# the counters equal the distinct messages, and the run is finished.

import random
import threading
import time

import pytest

from campaign_util import (add_inbox, batch, campaign_ingest, counters,
                           msg, post_batch, row_count, rows,
                           run_row, uid, wait_rows)

BATCHES = 20
PER_BATCH = 50
KILLS = 3
REPOST_EVERY = 4     # every 4th batch is posted twice, as a retrying sender
# The last batches wait until the last kill has happened: a restarted worker
# drains its backlog in a fraction of a second, and without this hold the
# last kill could land after the run had already finished.
HELD = 4


@pytest.mark.parametrize("source", ["http", "postgres"])
def test_kill_9_mid_run(pipeline, services, leadstub, source):
    total = BATCHES * PER_BATCH
    inbox = add_inbox(services, uid("inbox-"))
    run = uid("run-crash-")
    expected = {}                # message id -> (status, error)
    bodies = []
    names = {}
    for b in range(BATCHES):
        items = []
        for i in range(PER_BATCH):
            n = b * PER_BATCH + i
            mid = f"{run}-{n}"
            lead = f"{pipeline.prefix}L{n}"
            if n % 10 == 3:      # unknown to the source
                expected[mid] = ("failed", "lead_not_found")
            else:
                names[lead] = f"N{n}"
                expected[mid] = ("ready", None)
            items.append(msg(mid, lead))
        bodies.append(batch(run, items, inbox, run_total=total))
    if source == "http":
        for lead, name in names.items():
            leadstub.set(lead, {"lead": {"name": name}})
        leadstub.delay = 0.03
        over = {"lead_context__source": "http",
                "lead_context__url": leadstub.url}
    else:
        services.query(
            "INSERT INTO leads (id, name) SELECT * FROM"
            " unnest(%s::text[], %s::text[])",
            (list(names), list(names.values())))
        over = {"lead_context__source": "postgres"}

    crash_tuning = {"kafka__group.instance.id": f"{pipeline.group}-w",
                    "kafka__session.timeout.ms": 6000,
                    "kafka__heartbeat.interval.ms": 1000}
    worker = pipeline.start_worker(batch_max=2, redis_timeout_ms=300,
                                   lead_context__concurrency=5,
                                   lead_context__lease_ms=1000,
                                   lead_context__lease_wait_ms=1500,
                                   **over, **crash_tuning)
    ingest = campaign_ingest(pipeline)

    errors = []
    killed = threading.Event()

    def send():
        try:
            for i, body in enumerate(bodies):
                if i == BATCHES - HELD:
                    assert killed.wait(120), "the kills never finished"
                post_batch(ingest, body)
                if i % REPOST_EVERY == 0:
                    post_batch(ingest, body)
                time.sleep(0.1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    sender = threading.Thread(target=send, daemon=True)
    t0 = time.monotonic()
    sender.start()

    rnd = random.Random(0xCA4)
    kills = []
    assert 650 < (BATCHES - HELD) * PER_BATCH, "a kill point is held back"
    for k, at in enumerate((150, 400, 650)[:KILLS]):
        deadline = time.monotonic() + 60
        while row_count(services, run) < at:
            worker.assert_alive()
            assert time.monotonic() < deadline, (
                f"stalled at {row_count(services, run)} rows before kill "
                f"{k + 1}; log tail:\n{worker.log_tail(20)}")
            time.sleep(0.02)
        time.sleep(rnd.uniform(0, 0.2))
        worker.kill9()
        kills.append((round(time.monotonic() - t0, 2),
                      row_count(services, run)))
        pipeline.restart(worker)
    killed.set()

    sender.join(120)
    assert not sender.is_alive() and not errors, errors
    assert kills[-1][1] < total, f"the last kill came after the end: {kills}"
    got = wait_rows(services, run, total, timeout=120, worker=worker)
    pipeline.wait_caught_up(timeout=60)
    print(f"kills (s, rows): {kills}")

    got = rows(services, run)
    assert set(got) == set(expected), (
        f"missing {sorted(set(expected) - set(got))[:5]}, "
        f"extra {sorted(set(got) - set(expected))[:5]}")
    wrong = {m: (r["status"], r["error"]) for m, r in got.items()
             if (r["status"], r["error"]) != expected[m]}
    assert not wrong, f"{len(wrong)} wrong outcomes: " \
                      f"{sorted(wrong.items())[:5]}"
    n_failed = sum(1 for s in expected.values() if s[0] == "failed")
    c = counters(services, run)
    assert c == {"total": total, "processed": total - n_failed,
                 "failed": n_failed, "paused": 0, "expired": 0,
                 "status": "finished"}, (c, kills)
    assert run_row(services, run)["finished_at"] is not None
