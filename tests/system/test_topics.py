# topics = per_kind (docs/configuration.md): sluice-ingest writes each kind
# to <topic>.<kind>, and sluice-worker's pipeline of a kind reads that topic
# alone, its offsets kept under <group>.<kind> and <topic>.<kind>.
#
# - every kind lands from its own topic, and <topic> itself gets nothing;
# - a record in the shared <topic> is not read by a per-kind worker;
# - the settings that cannot work together are refused at load;
# - replay names the kind, and so the topic, it reads;
# - a dead letter keeps its per-kind origin, and redrive sends it back
#   there;
# - a reload keeps where records go until a restart.

import json
import os
import re
import signal
import subprocess
import time

import pytest

from campaign_util import (add_inbox, add_lead, batch, every_kind_sources, msg,
                           post_batch, post_lead_updated, uid, wait_rows)
from chat_util import (CHAT_SOURCE, business_number, post_chat, text_message,
                       wa_id, wait_messages, wamid, webhook)
from harness import (BUILD_DIR, SCHEMA_DIR, SOURCE, TRANSCRIPT_READY,
                     free_port, http_request, produce_record, transcript,
                     wait_until, worker_cmd)
from prometheus_client.parser import text_string_to_metric_families

PER_KIND = {"topics": "per_kind"}


def per_kind_ingest(pipeline):
    """An ingest with a source of every kind, each kind to its topic."""
    return pipeline.start_ingest(**PER_KIND, **every_kind_sources())


def ingest_headers(cid):
    """The headers sluice-ingest sets on a transcript record."""
    return [("source", SOURCE), ("kind", "transcript"),
            ("event-type", TRANSCRIPT_READY), ("webhook-id", f"wh-{cid}"),
            ("received-at", str(int(time.time() * 1000))),
            ("request-id", f"rq-{cid}")]


def count(services, topic):
    """Records in topic; 0 when it does not exist."""
    return services.topic_count(topic) if services.topic_exists(topic) \
        else 0


def offsets(services, group, topic):
    """{partition: next offset} stored under (group, topic)."""
    return dict(services.query(
        "SELECT partition, next_offset FROM sluice_offsets"
        " WHERE group_id = %s AND topic = %s", (group, topic)))


def caught_up(pipeline, kind):
    """The kind's pipeline has stored offsets up to the ends of its
    topic."""
    topic, group = f"{pipeline.topic}.{kind}", f"{pipeline.group}.{kind}"

    def done():
        pipeline.worker.assert_alive()
        marks = pipeline.services.watermarks(topic)
        got = offsets(pipeline.services, group, topic)
        return all(got.get(p, 0) >= hi for p, (lo, hi) in marks.items()
                   if hi > lo)
    wait_until(done, 60, 0.2, f"group {group} to reach the ends of {topic}",
               describe=lambda: "stored "
               f"{offsets(pipeline.services, group, topic)}, watermarks "
               f"{pipeline.services.watermarks(topic)}")


# --------------------------------------------------------------- 1. end to end

def partition_lags(port):
    """{(topic, partition): lag} from the worker's /metrics."""
    r = http_request(port, "GET", "/metrics", timeout=5)
    assert r.status == 200, r
    return {(s.labels["topic"], s.labels["partition"]): s.value
            for f in text_string_to_metric_families(r.body.decode())
            for s in f.samples if s.name == "sluice_worker_partition_lag"}


def test_each_kind_lands_from_its_own_topic(pipeline, services):
    s = services
    ingest = per_kind_ingest(pipeline)
    port = free_port()
    worker = pipeline.start_worker(**PER_KIND, listen=f"127.0.0.1:{port}")

    cid = pipeline.cid("t")
    r = ingest.post(transcript(cid, [("user", "Hi"), ("assistant", "Hello")]))
    assert r.status == 202, r
    biz, sender, mid = business_number(), wa_id(), wamid()
    post_chat(ingest, webhook(biz, [text_message(mid, sender, "hello")]))
    inbox, run, lead = uid("inbox-"), uid("run-"), uid("lead-")
    add_inbox(s, inbox)
    add_lead(s, lead, "Ada")
    post_batch(ingest, batch(run, [msg(f"{run}-1", lead)], inbox))
    rds = s.redis()
    upd = f"{pipeline.prefix}upd"
    rds.set(f"lead_ctx:{upd}", b'{"lead":{"name":"cached"}}')
    post_lead_updated(ingest, upd)

    wait_until(lambda: pipeline.message_count(cid) == 2, 30, 0.1,
               f"the transcript of {cid} in PostgreSQL",
               describe=lambda: worker.log_tail(15))
    wait_messages(s, [mid], worker=worker)
    wait_rows(s, run, 1, worker=worker)
    wait_until(lambda: not rds.exists(f"lead_ctx:{upd}"), 30, 0.1,
               f"lead_ctx:{upd} removed by the lead_updated record")

    # Each record is in its kind's topic, under its routing key; the
    # shared topic was never written.
    keys = {k: [m["key"].decode() for m in
                s.topic_records(f"{pipeline.topic}.{k}")]
            for k in ("transcript", "chat", "campaign", "lead_updated")}
    assert keys["transcript"] == [cid], keys
    assert keys["chat"] == [sender], keys
    assert keys["campaign"] == [run], keys
    assert len(keys["lead_updated"]) == 1, keys
    assert count(s, pipeline.topic) == 0
    kinds = {m["headers"].get("kind") for m in
             s.topic_records(f"{pipeline.topic}.transcript")}
    assert kinds == {b"transcript"}, kinds

    # Each pipeline keeps its offsets under its own group and topic, and
    # none under the shared topic.
    for kind in ("transcript", "chat", "campaign", "lead_updated"):
        caught_up(pipeline, kind)
    rows = s.query("SELECT DISTINCT group_id, topic FROM sluice_offsets"
                   " WHERE starts_with(group_id, %s)", (pipeline.group,))
    assert sorted(rows) == sorted(
        (f"{pipeline.group}.{k}", f"{pipeline.topic}.{k}")
        for k in ("transcript", "chat", "campaign", "lead_updated")), rows
    log = worker.log_text()
    for kind in ("transcript", "chat"):
        assert re.search(rf"assigned {re.escape(pipeline.topic)}\.{kind} "
                         rf"\[\d+\].*\(group {re.escape(pipeline.group)}"
                         rf"\.{kind}\)", log), log[-3000:]

    # Lag is per topic and partition: each kind's partition 0 is a series
    # of its own, not the four merged into one; /status names the topic.
    kinds = ("transcript", "chat", "campaign", "lead_updated")
    want = {(f"{pipeline.topic}.{k}", str(p)) for k in kinds
            for p in s.watermarks(f"{pipeline.topic}.{k}")}
    lags = wait_until(lambda: (lambda g: g if set(g) == want and
                               all(v == 0 for v in g.values()) else None)(
        partition_lags(port)), 15, 0.2, "lag 0 for every kind's partitions",
        describe=lambda: partition_lags(port))
    assert len(lags) == len(want) > 4, lags
    status = json.loads(http_request(port, "GET", "/status").body)
    assert {(p["name"], p["topic"]) for p in status["pipelines"]} == {
        (k, f"{pipeline.topic}.{k}") for k in kinds}, status["pipelines"]


# ------------------------------------------------------ 2. shared topic unread

def test_per_kind_worker_leaves_the_shared_topic_alone(pipeline, services):
    s = services
    ingest = pipeline.start_ingest(**PER_KIND)
    worker = pipeline.start_worker(**PER_KIND)
    shared, own, posted = (pipeline.cid("shared"), pipeline.cid("own"),
                           pipeline.cid("posted"))
    # The same record form into the shared topic and into the transcript
    # topic: only the latter is the pipeline's.
    for topic, cid in ((pipeline.topic, shared),
                       (f"{pipeline.topic}.transcript", own)):
        body = json.dumps(transcript(cid, [("e1", "user", "x")])).encode()
        produce_record(s.brokers, topic, cid, body, ingest_headers(cid))
    assert ingest.post(transcript(posted, [("e1", "user", "y")])).status \
        == 202
    for cid in (own, posted):
        wait_until(lambda: pipeline.message_count(cid) == 1, 30, 0.1,
                   f"{cid} in PostgreSQL",
                   describe=lambda: worker.log_tail(15))
    caught_up(pipeline, "transcript")
    assert s.topic_count(pipeline.topic) == 1
    time.sleep(1)   # long enough for a record on a subscribed topic
    assert pipeline.message_count(shared) == 0
    assert s.query("SELECT group_id FROM sluice_offsets WHERE topic = %s",
                   (pipeline.topic,)) == []
    assert not re.search(rf"assigned {re.escape(pipeline.topic)} \[",
                         worker.log_text())


# --------------------------------------------------------- 3. refused settings

def _check(tmp_path, binary, name, text):
    conf = tmp_path / name
    conf.write_text(text)
    r = subprocess.run([str(BUILD_DIR / binary), "-c", str(conf),
                        "--check-config"], capture_output=True, text=True,
                       timeout=60, env={k: v for k, v in os.environ.items()
                                        if not k.startswith("SLUICE_")})
    return conf, r


def test_settings_that_cannot_work_are_refused(tmp_path):
    ingest_base = (f"schema_dir = {SCHEMA_DIR}\n"
                   "source.a.kind = transcript\n"
                   "source.a.signature = none\n")
    conf, r = _check(tmp_path, "sluice-worker", "w1.conf",
                     "topics = per_kind\npipelines = shared\n")
    assert r.returncode != 0, r
    assert "topics = per_kind needs pipelines = per_kind" in r.stderr, r
    # a pipeline would read its own dead letters
    conf, r = _check(tmp_path, "sluice-worker", "w2.conf",
                     "topic = t\ntopics = per_kind\ndlq_topic = t.chat\n")
    assert r.returncode != 0, r
    assert "dlq_topic must differ from the kinds' topics" in r.stderr, r
    conf, r = _check(tmp_path, "sluice-worker", "w3.conf",
                     "topic = t\ndlq_topic = t.chat\n")
    assert r.returncode == 0, r.stderr
    for binary, text in (("sluice-worker", "topics = bogus\n"),
                         ("sluice-ingest", ingest_base + "topics = bogus\n")):
        conf, r = _check(tmp_path, binary, f"{binary}-bogus.conf", text)
        assert r.returncode != 0, (binary, r)
        assert f"{conf}:" in r.stderr and 'topics: "bogus"' in r.stderr, \
            (binary, r.stderr)
    # what the two refusals are about is accepted on its own
    for binary, text in (("sluice-worker", "topics = per_kind\n"),
                         ("sluice-ingest", ingest_base +
                          "topics = per_kind\n")):
        conf, r = _check(tmp_path, binary, f"{binary}-ok.conf", text)
        assert r.returncode == 0, (binary, r.stderr)
        assert "topics = per_kind" in r.stdout, (binary, r.stdout)


# ------------------------------------------------------------------- 4. replay

def test_replay_reads_the_topic_of_its_kind(pipeline, services):
    s = services
    ingest = pipeline.start_ingest(**PER_KIND, **{
        f"source__{CHAT_SOURCE}__kind": "chat",
        f"source__{CHAT_SOURCE}__signature": "none"})
    pipeline.start_worker(**PER_KIND)
    cids = [pipeline.cid(f"r{i}") for i in range(3)]
    for cid in cids:
        assert ingest.post(transcript(cid, [("user", "a"),
                                            ("assistant", "b")])).status \
            == 202
    biz, mid = business_number(), wamid()
    post_chat(ingest, webhook(biz, [text_message(mid, wa_id(), "hi")]))
    wait_messages(s, [mid], worker=pipeline.worker)
    caught_up(pipeline, "transcript")
    for cid in cids:
        assert pipeline.message_count(cid) == 2, cid

    # Without --kind a replay cannot know its topic.
    r = worker_cmd(pipeline, "replay", "--from", "1970-01-01T00:00:00Z",
                   **PER_KIND)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "replay needs --kind KIND with topics = per_kind" in r.stderr
    assert f"{pipeline.topic}.<kind>" in r.stderr, r.stderr
    # --kind belongs to replay
    r = worker_cmd(pipeline, "consume", "--kind", "transcript", **PER_KIND)
    assert r.returncode == 2 and "belong to replay" in r.stderr, r.stderr

    # Rows lost since come back from the transcript topic; the chat
    # topic is not read.
    s.query("DELETE FROM messages WHERE conversation_id = ANY(%s)",
            (cids[:2],))
    s.query("DELETE FROM chat_messages WHERE provider_message_id = %s",
            (mid,))
    r = worker_cmd(pipeline, "replay", "--kind", "transcript", "--from",
                   "1970-01-01T00:00:00Z", **PER_KIND)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{pipeline.topic}.transcript" in r.stderr, r.stderr[-2000:]
    done = re.search(r"replay done: (\d+) records", r.stderr)
    assert done and int(done.group(1)) == len(cids), r.stderr[-2000:]
    for cid in cids:
        assert pipeline.message_count(cid) == 2, cid
    assert s.scalar("SELECT count(*) FROM chat_messages"
                    " WHERE provider_message_id = %s", (mid,)) == 0
    stored = s.query("SELECT DISTINCT topic FROM sluice_offsets"
                     " WHERE group_id LIKE %s",
                     (f"{pipeline.group}-replay%",))
    assert stored == [(f"{pipeline.topic}.transcript",)], stored


# ------------------------------------------------------------- 5. dead letters

def test_dead_letter_goes_back_to_its_kinds_topic(pipeline, services):
    s = services
    own, dlq = f"{pipeline.topic}.transcript", f"{pipeline.topic}.dlq"
    worker = pipeline.start_worker(**PER_KIND)
    bad, fixed = pipeline.cid("bad"), pipeline.cid("fixed")
    produce_record(s.brokers, own, bad, b"not json", ingest_headers(bad))
    wait_until(lambda: count(s, dlq) == 1, 60, 0.2,
               "the refused record in the dead-letter topic",
               describe=lambda: worker.log_tail(15))
    dead = s.topic_records(dlq)
    origin = dead[0]["headers"].get("dlq-origin", b"").decode()
    assert re.fullmatch(rf"{re.escape(own)}/\d+@0", origin), dead[0]
    # one dead-lettered by an earlier run, valid now
    body = json.dumps(transcript(fixed, [("e1", "user", "back")])).encode()
    produce_record(s.brokers, dlq, fixed, body,
            ingest_headers(fixed) + [("dlq-reason", "database was down"),
                                     ("dlq-origin", f"{own}/0@0")])
    before = s.topic_count(own)

    r = worker_cmd(pipeline, "redrive", **PER_KIND)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"redrive done: (\d+) records read, (\d+) sent back, "
                  r"(\d+) stay dead", r.stdout)
    assert m and m.groups() == ("2", "2", "0"), r.stdout
    assert s.topic_count(own) == before + 2
    back = [m for m in s.topic_records(own)
            if m["headers"].get("redrive-attempts")]
    assert sorted(m["key"].decode() for m in back) == sorted([bad, fixed])
    assert count(s, pipeline.topic) == 0

    # the valid one lands; the bad one dies again, from the same topic
    wait_until(lambda: pipeline.message_count(fixed) == 1, 60, 0.2,
               "the redriven transcript in PostgreSQL")
    wait_until(lambda: count(s, dlq) == 3, 60, 0.2,
               "the bad record dead-lettered again")
    again = [m for m in s.topic_records(dlq)
             if m["headers"].get("redrive-attempts")]
    assert [m["key"].decode() for m in again] == [bad], again
    assert again[0]["headers"]["dlq-origin"].decode().startswith(f"{own}/")


def one_topic_transcript_and_chat(pipeline, services):
    """topics = shared: a chat message and a transcript that share a
    partition of the one topic, landed; (cid, chat message id)."""
    s = services
    ingest = pipeline.start_ingest(**{
        f"source__{CHAT_SOURCE}__kind": "chat",
        f"source__{CHAT_SOURCE}__signature": "none"})
    pipeline.start_worker()
    mid = wamid()
    post_chat(ingest, webhook(business_number(),
                              [text_message(mid, wa_id(), "hi")]))
    [chat] = s.topic_records(pipeline.topic)
    # Conversations, eight at a time, until one is keyed to the chat
    # record's partition: (3/4)^32 that none is.
    cid = None
    for n in range(4):
        cids = [pipeline.cid(f"one{n}-{i}") for i in range(8)]
        for c in cids:
            assert ingest.post(transcript(c, [("user", "a")])).status == 202
        on = {m["key"].decode() for m in s.topic_records(pipeline.topic)
              if m["partition"] == chat["partition"]}
        cid = next((c for c in cids if c in on), None)
        if cid:
            break
    else:
        pytest.fail(f"no conversation on partition {chat['partition']}")
    wait_messages(s, [mid], worker=pipeline.worker)
    pipeline.wait_caught_up()
    assert pipeline.message_count(cid) == 1
    return cid, mid


def chat_count(services, mid):
    return services.scalar("SELECT count(*) FROM chat_messages"
                           " WHERE provider_message_id = %s", (mid,))


def test_replay_kind_with_one_topic_applies_that_kind_alone(pipeline,
                                                           services):
    """With topics = shared, --kind keeps the topic and passes over the
    other kinds' records; it names one known kind."""
    s = services
    cid, mid = one_topic_transcript_and_chat(pipeline, s)
    for kind, text in (("bogus", '--kind: "bogus" is not a kind'),
                       ("transcript,chat", '"transcript,chat" is not a kind'),
                       (" chat", '" chat" is not a kind')):
        r = worker_cmd(pipeline, "replay", "--kind", kind, "--from",
                       "1970-01-01T00:00:00Z")
        assert r.returncode == 2, (kind, r.stderr[-2000:])
        assert text in r.stderr, (kind, r.stderr)

    s.query("DELETE FROM messages WHERE starts_with(conversation_id, %s)",
            (pipeline.prefix,))
    s.query("DELETE FROM chat_messages WHERE provider_message_id = %s",
            (mid,))
    r = worker_cmd(pipeline, "replay", "--kind", "transcript", "--from",
                   "1970-01-01T00:00:00Z")
    assert r.returncode == 0, r.stderr[-3000:]
    assert pipeline.message_count(cid) == 1
    assert chat_count(s, mid) == 0
    stored = s.query("SELECT DISTINCT topic FROM sluice_offsets"
                     " WHERE group_id LIKE %s",
                     (f"{pipeline.group}-replay%",))
    assert stored == [(pipeline.topic,)], stored


def test_replay_of_another_kind_later_applies_it(pipeline, services):
    """What one kind's replay passed over, another kind's replay (with the
    default group) applies."""
    s = services
    cid, mid = one_topic_transcript_and_chat(pipeline, s)
    s.query("DELETE FROM chat_messages WHERE provider_message_id = %s",
            (mid,))
    r = worker_cmd(pipeline, "replay", "--kind", "transcript", "--from",
                   "1970-01-01T00:00:00Z")
    assert r.returncode == 0, r.stderr[-3000:]
    assert chat_count(s, mid) == 0
    r = worker_cmd(pipeline, "replay", "--kind", "chat", "--from",
                   "1970-01-01T00:00:00Z")
    assert r.returncode == 0, r.stderr[-3000:]
    assert chat_count(s, mid) == 1, r.stderr[-3000:]


# ------------------------------------------------------------------- 6. reload

@pytest.mark.parametrize("change", ["topics", "topic"])
def test_reload_keeps_where_records_go_until_a_restart(pipeline, services,
                                                       change):
    """topic and topics wait for a restart (the workers read where the
    running ingest writes): a SIGHUP that changes one says so, and the
    records keep going to the running topic."""
    s = services
    ingest = pipeline.start_ingest()
    first = pipeline.cid("before")
    assert ingest.post(transcript(first, [("user", "a")])).status == 202
    text = ingest.config.read_text()
    moved = f"{pipeline.topic}_moved"
    if change == "topics":
        text += "topics = per_kind\n"
        elsewhere = f"{pipeline.topic}.transcript"
    else:
        text = text.replace(f"topic = {pipeline.topic}\n",
                            f"topic = {moved}\n")
        elsewhere = moved
    ingest.config.write_text(text)
    before = len(ingest.log_text())
    ingest.signal(signal.SIGHUP)
    wait_until(lambda: re.search(rf"restart required for .*\b{change}\b",
                                 ingest.log_text()[before:]), 10, 0.1,
               f"the reload to say {change} waits for a restart",
               describe=lambda: ingest.log_text()[before:])
    after = pipeline.cid("after")
    assert ingest.post(transcript(after, [("user", "b")])).status == 202
    there = ([m["key"].decode() for m in s.topic_records(elsewhere)]
             if s.topic_exists(elsewhere) else [])
    assert there == [], f"{after} went to {elsewhere}"
    keys = [m["key"].decode() for m in s.topic_records(pipeline.topic)]
    assert sorted(keys) == sorted([first, after]), keys
