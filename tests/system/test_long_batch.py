# Batches that take longer than kafka.max.poll.interval.ms
# (docs/operations.md, "Long batches"): while a batch waits on its lookups
# or on PostgreSQL, the worker keeps serving its consumer (its partitions
# paused), so the group keeps its member and its partitions:
#
# - a campaign batch whose lead lookups take ~3x the interval lands every
#   message once, each lead looked up once, with no "maximum poll interval"
#   warning and no revocation;
# - a second worker joining the group mid-batch gets its partitions within
#   seconds (the first one serves the rebalance), including ones of the open
#   batch: every message is applied once (the run's counters agree with its
#   rows), whichever worker commits it;
# - PostgreSQL down for longer than the interval, then back: every record
#   lands once, and the group never rebalanced (no rejoin storm).
#
# The broker's group.min.session.timeout.ms is Kafka's default 6000
# (deploy/services.sh), and librdkafka wants max.poll.interval.ms >=
# session.timeout.ms: 6000 / 7000 is the shortest pair that works.

import re
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from campaign_util import (add_inbox, batch, campaign_ingest, campaign_lines,
                           check_counters, http_worker, msg, post_batch, uid,
                           wait_rows)
from harness import free_port, http_request, transcript, wait_until
from leadstub import LeadStub

MAX_POLL_MS = 7000
KAFKA = {"kafka__session__timeout__ms": 6000,
         "kafka__max__poll__interval__ms": MAX_POLL_MS}
# What librdkafka says (log and consumer error) when the interval passed.
MAX_POLL_RX = re.compile(r"maximum poll interval", re.I)


@pytest.fixture
def stub():
    s = LeadStub().start()
    yield s
    s.stop()


def _revokes(port):
    r = http_request(port, "GET", "/metrics", timeout=5)
    assert r.status == 200, r
    for fam in text_string_to_metric_families(r.body.decode("utf-8")):
        for s in fam.samples:
            if (s.name == "sluice_worker_rebalances_total"
                    and s.labels.get("type") == "revoke"):
                return s.value
    raise AssertionError("no sluice_worker_rebalances_total{type=revoke}")


def _kept_the_group(worker, port):
    text = worker.log_text()
    warned = [line for line in text.splitlines() if MAX_POLL_RX.search(line)]
    assert not warned, "the batch outlived max.poll.interval.ms:\n" + \
        "\n".join(warned[:5])
    revoked = [line for line in text.splitlines() if "revoked" in line]
    assert not revoked, "partitions were revoked:\n" + "\n".join(revoked[:5])
    assert _revokes(port) == 0


def test_long_lookup_batch_keeps_its_partitions(pipeline, services, stub):
    n, delay = 12, 1.5          # ~18 s of lookups, one at a time
    port = free_port()
    worker = http_worker(pipeline, stub, listen=f"127.0.0.1:{port}",
                         lead_context__concurrency=1,
                         lead_context__timeout_ms=10000,
                         lead_context__retries=0,
                         lead_context__batch_budget_ms=120000, **KAFKA)
    ingest = campaign_ingest(pipeline)
    inbox = add_inbox(services, uid("inbox-"))
    run = uid("run-")
    leads = [uid(f"{pipeline.prefix}lead{i}-") for i in range(n)]
    for i, lead in enumerate(leads):
        stub.set(lead, {"lead": {"name": f"Lead {i}"}})
    stub.delay = delay
    t0 = time.monotonic()
    post_batch(ingest, batch(run, [msg(f"{run}-{i}", lead)
                                   for i, lead in enumerate(leads)], inbox))
    got = wait_rows(services, run, n, timeout=120, worker=worker)
    took = time.monotonic() - t0
    assert took * 1000 > 1.5 * MAX_POLL_MS, \
        f"the batch took {took:.1f} s: too short to prove anything"
    assert {r["status"] for r in got.values()} == {"ready"}, got
    assert sorted(got) == sorted(f"{run}-{i}" for i in range(n))
    # A record posted behind it lands too: the partition is consumed again.
    later = uid("run-")
    stub.delay = 0
    post_batch(ingest, batch(later, [msg(f"{later}-0", leads[0])], inbox))
    wait_rows(services, later, 1, timeout=60, worker=worker)
    # Applied once: one campaign line for the long batch, each lead looked
    # up once (a batch applied again after a rejoin would look them up
    # again or count its messages as duplicates).
    lines = [d for d in campaign_lines(worker.log_text())
             if d.get("messages") == n]
    assert len(lines) == 1, [d["line"] for d in lines]
    assert all(stub.calls[lead] == 1 for lead in leads), dict(stub.calls)
    _kept_the_group(worker, port)


def test_member_joining_mid_batch(pipeline, services, stub):
    over = dict(lead_context__concurrency=1, lead_context__timeout_ms=10000,
                lead_context__retries=0, lead_context__batch_budget_ms=120000,
                **KAFKA)
    first = http_worker(pipeline, stub, **over)
    ingest = campaign_ingest(pipeline)
    inbox = add_inbox(services, uid("inbox-"))
    stub.delay = 1.0
    # Runs of campaigns of their own: on several partitions, all in the
    # first worker's batch.
    runs = {}
    for r in range(4):
        run = uid("run-")
        leads = [uid(f"{pipeline.prefix}lead{r}{i}-") for i in range(3)]
        for lead in leads:
            stub.set(lead, {"lead": {"name": "L"}})
        runs[run] = [msg(f"{run}-{i}", lead) for i, lead in enumerate(leads)]
        post_batch(ingest, batch(run, runs[run], inbox),
                   campaign_id=uid("cmp-"))
    wait_until(lambda: stub.total >= 2, 30, 0.1,
               message="the first worker's batch to be looking up")
    t0 = time.monotonic()
    second = http_worker(pipeline, stub, **over)   # waits for "assigned"
    joined = time.monotonic() - t0
    assert first.running() and "revoked" in first.log_text(), \
        "the first worker gave no partition away"
    for run, messages in runs.items():
        got = wait_rows(services, run, len(messages), timeout=120,
                        worker=first)
        wait_until(lambda: {r["status"] for r in
                            wait_rows(services, run, len(messages))
                            .values()} == {"ready"}, 60, 0.2,
                   message=f"the messages of {run} to be ready",
                   describe=lambda: str(got))
    check_counters(services, list(runs))
    for w in (first, second):
        w.assert_alive()
        assert not MAX_POLL_RX.search(w.log_text()), w.log_tail(20)
    # The group rebalanced while the batch ran, not after it.
    assert joined < 15, f"the second worker waited {joined:.1f} s"


def test_postgres_down_longer_than_max_poll(pipeline, services):
    port = free_port()
    worker = pipeline.start_worker(listen=f"127.0.0.1:{port}",
                                   retry_backoff_min_ms=50,
                                   retry_backoff_max_ms=1000, **KAFKA)
    ingest = pipeline.start_ingest()
    first = pipeline.cid("first")
    assert ingest.post(transcript(first, [("user", "hi")])).status == 202
    wait_until(lambda: pipeline.message_count(first) == 1, 30,
               message="the first message to land")
    cids = [pipeline.cid(f"d{i}") for i in range(20)]
    try:
        services.stop_postgres()
        for i, c in enumerate(cids):
            r = ingest.post(transcript(c, [(f"{c}-1", "user", f"q{i}")]))
            assert r.status == 202, r
        # Down for twice the interval, the batch retrying all along.
        time.sleep(2 * MAX_POLL_MS / 1000)
        worker.assert_alive()
    finally:
        services.start_postgres()
    wait_until(lambda: pipeline.message_count() == len(cids) + 1, 90, 0.25,
               message="every message once PostgreSQL is back",
               describe=lambda: f"{pipeline.message_count()} messages; "
               f"worker log tail:\n{worker.log_tail(10)}")
    pipeline.wait_caught_up()
    assert not pipeline.duplicates()
    assert all(pipeline.message_count(c) == 1 for c in cids)
    assert services.dlq_count(pipeline.topic) == 0
    _kept_the_group(worker, port)
