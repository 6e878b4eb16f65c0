# Helpers of the campaign tests (docs/campaigns.md): batch bodies, rows of
# campaign_messages / campaign_runs, leads and inboxes in PostgreSQL, the
# worker's per-batch "campaign:" log line.

import datetime as dt
import json
import re
import uuid

import pytest

from harness import Pipeline, committed_offsets, wait_until

CAMPAIGN_SOURCE = "camp"
LEADS_SOURCE = "leadupd"


def every_kind_sources():
    """start_ingest() settings for a source of each kind beside the
    transcript one: campaign, lead_updated and chat, all unsigned."""
    from chat_util import CHAT_SOURCE
    return {f"source__{CAMPAIGN_SOURCE}__kind": "campaign",
            f"source__{CAMPAIGN_SOURCE}__signature": "none",
            f"source__{LEADS_SOURCE}__kind": "lead_updated",
            f"source__{LEADS_SOURCE}__signature": "none",
            f"source__{CHAT_SOURCE}__kind": "chat",
            f"source__{CHAT_SOURCE}__signature": "none"}


def uid(tag=""):
    return f"{tag}{uuid.uuid4().hex[:12]}"


def when(seconds=3600, offset_minutes=0):
    """now + seconds as RFC 3339 in the given UTC offset, e.g. +05:30."""
    tz = dt.timezone(dt.timedelta(minutes=offset_minutes))
    t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
    return t.astimezone(tz).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def msg(message_id, lead_id, vars=None):
    m = {"message_id": message_id, "lead_id": lead_id}
    if vars is not None:
        m["vars"] = vars
    return m


def batch(run_id, messages, inbox_id, run_total=None,
          template="Hi {{lead.name}}", end_time=None, workspace_id="ws-test",
          **extra):
    body = {
        "run_id": run_id,
        "workspace_id": workspace_id,
        "inbox_id": inbox_id,
        "end_time": end_time or when(3600),
        "run_total": run_total if run_total is not None else len(messages),
        "template": template,
        "messages": messages,
    }
    body.update(extra)
    return body


def post_batch(ingest, body, campaign_id="cmp-test", expect=202):
    r = ingest.request("POST", f"/v1/campaigns/{campaign_id}/batches", body)
    if expect is not None:
        assert r.status == expect, r
    return r


def post_lead_updated(ingest, lead_id, expect=202):
    r = ingest.post({"lead_id": lead_id}, source=LEADS_SOURCE)
    if expect is not None:
        assert r.status == expect, r
    return r


# ---------------------------------------------------------------- PostgreSQL

def add_inbox(services, inbox_id, connected=True, workspace_id="ws-test"):
    services.query(
        "INSERT INTO inboxes (id, workspace_id, name, connected)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (id) DO UPDATE"
        " SET connected = EXCLUDED.connected, updated_at = now()",
        (inbox_id, workspace_id, f"inbox {inbox_id}", connected))
    return inbox_id


def set_inbox(services, inbox_id, connected):
    services.query("UPDATE inboxes SET connected = %s, updated_at = now()"
                   " WHERE id = %s", (connected, inbox_id))


def add_lead(services, lead_id, name, deleted_at=None, attributes=None,
             email=None):
    services.query(
        "INSERT INTO leads (id, workspace_id, name, email, attributes,"
        " deleted_at) VALUES (%s, 'ws-test', %s, %s, %s::jsonb, %s)",
        (lead_id, name, email, json.dumps(attributes or {}), deleted_at))
    return lead_id


MSG_COLS = ("message_id", "run_id", "lead_id", "status", "parts", "error",
            "created_at", "updated_at")
RUN_COLS = ("id", "campaign_id", "workspace_id", "inbox_id", "end_time",
            "total", "processed", "failed", "paused", "expired", "status",
            "finished_at", "created_at", "updated_at")


def rows(services, run_id):
    """{message_id: row dict} of a run."""
    out = services.query(
        f"SELECT {', '.join(MSG_COLS)} FROM campaign_messages"
        " WHERE run_id = %s", (run_id,))
    return {r[0]: dict(zip(MSG_COLS, r)) for r in out}


def row_count(services, run_id):
    return services.scalar(
        "SELECT count(*) FROM campaign_messages WHERE run_id = %s", (run_id,))


def message_rows(services, message_ids):
    out = services.query(
        f"SELECT {', '.join(MSG_COLS)} FROM campaign_messages"
        " WHERE message_id = ANY(%s)", (list(message_ids),))
    return {r[0]: dict(zip(MSG_COLS, r)) for r in out}


def run_row(services, run_id):
    out = services.query(
        f"SELECT {', '.join(RUN_COLS)} FROM campaign_runs WHERE id = %s",
        (run_id,))
    return dict(zip(RUN_COLS, out[0])) if out else None


def counters(services, run_id):
    r = run_row(services, run_id)
    if r is None:
        return None
    return {k: r[k] for k in ("total", "processed", "failed", "paused",
                              "expired", "status")}


def statuses(services, run_id):
    """{message_id: (status, error)}"""
    return {m: (r["status"], r["error"]) for m, r in
            rows(services, run_id).items()}


def wait_rows(services, run_id, n, timeout=30, worker=None):
    def enough():
        if worker is not None:
            worker.assert_alive()
        return row_count(services, run_id) >= n
    wait_until(enough, timeout, 0.1,
               message=f"{n} campaign_messages rows of run {run_id}",
               describe=lambda: (
                   f"{row_count(services, run_id)} rows, run "
                   f"{counters(services, run_id)}" +
                   (f"; worker log tail:\n{worker.log_tail(15)}"
                    if worker is not None else "")))
    return rows(services, run_id)


def wait_run(services, run_id, pred, timeout=30, what="run state",
             worker=None):
    def ok():
        if worker is not None:
            worker.assert_alive()
        c = counters(services, run_id)
        return c if c is not None and pred(c) else None
    return wait_until(ok, timeout, 0.1,
                      message=f"{what} of run {run_id}",
                      describe=lambda: f"{counters(services, run_id)}")


def counter_mismatches(services, run_ids=None):
    """Runs whose counters disagree with their outbox rows, read in one
    statement (one snapshot, so a commit in between cannot confuse it):
    processed/failed/paused/expired against
    `SELECT run_id, status, count(*) FROM campaign_messages GROUP BY 1, 2`,
    rows of a run that does not exist, and `finished` against
    processed + failed + expired >= total. Every run when run_ids is None.
    Returns {run_id: description}."""
    out = services.query(
        "SELECT coalesce(r.id, m.run_id), r.id IS NOT NULL, r.total,"
        " r.processed, r.failed, r.paused, r.expired, r.status,"
        " m.status, m.n"
        " FROM campaign_runs r FULL JOIN ("
        "  SELECT run_id, status, count(*) AS n FROM campaign_messages"
        "  GROUP BY 1, 2) m ON m.run_id = r.id"
        " WHERE %s::text[] IS NULL OR coalesce(r.id, m.run_id) = ANY(%s)",
        (run_ids and list(run_ids), run_ids and list(run_ids)))
    runs, rows = {}, {}
    for (rid, exists, total, processed, failed, paused, expired, status,
         mstatus, n) in out:
        if exists:
            runs[rid] = {"total": total, "ready": processed,
                         "failed": failed, "paused": paused,
                         "expired": expired, "status": status}
        rows.setdefault(rid, {})
        if mstatus is not None:
            rows[rid][mstatus] = n
    bad = {}
    for rid, got in rows.items():
        run = runs.get(rid)
        if run is None:
            bad[rid] = f"outbox rows {got} but no campaign_runs row"
            continue
        counted = {k: run[k] for k in ("ready", "failed", "paused",
                                       "expired")}
        want = {k: got.get(k, 0) for k in counted}
        if counted != want:
            bad[rid] = f"counters {counted}, outbox rows {want}"
            continue
        done = run["ready"] + run["failed"] + run["expired"] >= run["total"]
        if done != (run["status"] == "finished"):
            bad[rid] = (f"status {run['status']} with {counted} of "
                        f"total {run['total']}")
    return bad


def check_counters(services, run_ids=None):
    """Fails when any run's counters disagree with its outbox rows."""
    bad = counter_mismatches(services, run_ids)
    assert not bad, "runs whose counters disagree with campaign_messages:\n" \
        + "\n".join(f"  {k}: {v}" for k, v in sorted(bad.items())[:20])


def committed(services, group, topic):
    return committed_offsets(services, group, topic)


def wait_caught_up(services, group, topic, worker=None, timeout=30):
    """The group's offsets in PostgreSQL reach the topic's high watermarks:
    every record sent so far is processed and committed."""
    def done():
        if worker is not None and not worker.killed:
            worker.assert_alive()
        marks = services.watermarks(topic)
        got = committed(services, group, topic)
        return all(got.get(p, 0) >= hi for p, (lo, hi) in marks.items()
                   if hi > lo)
    wait_until(done, timeout, 0.1,
               message=f"group {group} to catch up on {topic}",
               describe=lambda: (f"watermarks {services.watermarks(topic)}, "
                                 f"committed {committed(services, group, topic)}"))


# ---------------------------------------------------------------- the log

_FIELDS = {
    "runs": r"(\d+) runs?\b",
    "messages": r"(\d+) messages?\b",
    "leads": r"(\d+) leads?\b",
    "hits": r"(\d+) hits?\b",
    "misses": r"(\d+) miss(?:es)?\b",
    "lease_waits": r"(\d+) lease waits?\b",
    "redis_errors": r"(\d+) redis errors?\b",
    "lookups": r"(\d+) lookups?\b",
    "peak": r"peak (\d+)",
    "lookup_ms": r"in flight, (\d+) ms",
    "invalid": r"(\d+) invalid\b",
    "over_budget": r"(\d+) over budget\b",
    "cancelled": r"(\d+) cancelled\b",
    "ready": r"(\d+) ready\b",
    "failed": r"(\d+) failed\b",
    "paused": r"(\d+) paused\b",
    "expired": r"(\d+) expired\b",
}


def campaign_lines(text):
    """The worker's per-batch campaign statistics: a list of dicts with the
    fields found on each line holding "campaign:" (absent ones left out)."""
    out = []
    for line in text.splitlines():
        i = line.find("campaign:")
        if i < 0 or not re.search(r"\d+ messages", line[i:]):
            continue
        part = line[i + len("campaign:"):]
        d = {"line": line}
        for k, rx in _FIELDS.items():
            m = re.search(rx, part)
            if m:
                d[k] = int(m.group(1))
        out.append(d)
    return out


def campaign_sum(text, field):
    return sum(d.get(field, 0) for d in campaign_lines(text))


# ---------------------------------------------------------------- daemons

def campaign_ingest(pipeline, **over):
    s = {f"source__{CAMPAIGN_SOURCE}__kind": "campaign",
         f"source__{CAMPAIGN_SOURCE}__signature": "none",
         f"source__{LEADS_SOURCE}__kind": "lead_updated",
         f"source__{LEADS_SOURCE}__signature": "none"}
    s.update(over)
    return pipeline.start_ingest(**s)


def http_worker(pipeline, stub, **over):
    s = {"lead_context__source": "http",
         "lead_context__url": stub.url,
         "redis_timeout_ms": 300}
    s.update(over)
    return pipeline.start_worker(**s)


class Pair:
    """An ingest and a worker of their own on a topic and group of their
    own, inside one Pipeline (its teardown checks them)."""

    def __init__(self, pipeline, tag, stub=None, worker_over=None,
                 ingest_over=None, wait=True):
        self.topic = f"{pipeline.topic}_{tag}"
        self.group = f"{pipeline.group}_{tag}"
        wo = dict(worker_over or {})
        io = dict(ingest_over or {})
        if stub is not None:
            wo.setdefault("lead_context__source", "http")
            wo.setdefault("lead_context__url", stub.url)
        wo.setdefault("redis_timeout_ms", 300)
        self.worker = pipeline.start_worker(wait=False, topic=self.topic,
                                            group_id=self.group, **wo)
        self.ingest = campaign_ingest(pipeline, topic=self.topic, **io)
        if wait:
            self.worker.wait_log(r"assigned")

    def caught_up(self, services, timeout=30):
        wait_caught_up(services, self.group, self.topic, self.worker,
                       timeout)


def module_pipeline(request, services, tmp_path_factory):
    """A Pipeline for a module-scoped fixture: yield it, then call
    finish_pipeline() on teardown."""
    if services.broken:
        pytest.fail("an earlier test left the services down:\n"
                    + services.broken, pytrace=False)
    return Pipeline(request, services,
                    tmp_path_factory.mktemp(request.node.name[:30]))


def finish_pipeline(p):
    problems = p.check_daemons()
    if problems:
        pytest.fail("daemon teardown:\n\n" + "\n\n".join(problems),
                    pytrace=False)
