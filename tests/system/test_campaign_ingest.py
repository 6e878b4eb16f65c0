# POST /v1/campaigns/{campaign_id}/batches at the door (docs/campaigns.md):
# every bad item in one 422 with its index and path, nothing published
# unless all are valid; the accepted batch is one record keyed by run_id,
# the body byte for byte.

import copy
import json

import pytest

from campaign_util import batch, campaign_ingest, msg, when

MAX_MESSAGES = 5


def _good(run="run-ingest", n=2):
    return batch(run, [msg(f"{run}-m{i}", f"lead-{i}", {"k": i})
                       for i in range(n)], "inbox-x", run_total=10,
                 max_split_parts=3, split_max_chars=160)


def _with(**changes):
    b = _good(n=4)
    for k, v in changes.items():
        if v is DELETE:
            b.pop(k)
        else:
            b[k] = v
    return b


def _msgs(changes):
    """_good(4) with messages[i] updated by changes[i] (DELETE removes)."""
    b = _good(n=4)
    for i, ch in changes.items():
        for k, v in ch.items():
            if v is DELETE:
                b["messages"][i].pop(k)
            else:
                b["messages"][i][k] = v
    return b


def _prompt(prompt=None, **changes):
    """_good(4) composed by a model: prompt instead of template."""
    return _with(template=DELETE,
                 prompt=prompt if prompt is not None else {"user": "u"},
                 **changes)


DELETE = object()

# (name, body, [(index or None, path)])
BAD = [
    ("two bad messages", _msgs({1: {"lead_id": DELETE},
                                3: {"message_id": ""}}),
     [(1, "$.messages[1].lead_id"), (3, "$.messages[3].message_id")]),
    ("top-level and message", _msgs({2: {"vars": "nope"}}) | {"run_total": 0},
     [(None, "$.run_total"), (2, "$.messages[2].vars")]),
    ("end_time without offset", _with(end_time="2026-11-23T20:00:00"),
     [(None, "$.end_time")]),
    ("end_time not a time", _with(end_time="tomorrow evening"),
     [(None, "$.end_time")]),
    ("end_time a number", _with(end_time=1790000000),
     [(None, "$.end_time")]),
    ("messages empty", _with(messages=[]), [(None, "$.messages")]),
    ("messages not a list", _with(messages={"a": 1}),
     [(None, "$.messages")]),
    ("messages missing", _with(messages=DELETE), [(None, "$.messages")]),
    ("too many messages",
     _good(n=MAX_MESSAGES + 1), [(None, "$.messages")]),
    ("run_id missing", _with(run_id=DELETE), [(None, "$.run_id")]),
    ("run_id empty", _with(run_id=""), [(None, "$.run_id")]),
    ("run_id 257 bytes", _with(run_id="r" * 257), [(None, "$.run_id")]),
    ("run_id 129 two-byte chars", _with(run_id="é" * 129),
     [(None, "$.run_id")]),
    ("workspace_id a number", _with(workspace_id=3),
     [(None, "$.workspace_id")]),
    ("inbox_id missing", _with(inbox_id=DELETE), [(None, "$.inbox_id")]),
    ("run_total zero", _with(run_total=0), [(None, "$.run_total")]),
    ("run_total negative", _with(run_total=-4), [(None, "$.run_total")]),
    ("run_total a string", _with(run_total="10"), [(None, "$.run_total")]),
    ("run_total fractional", _with(run_total=2.5), [(None, "$.run_total")]),
    ("template empty", _with(template=""), [(None, "$.template")]),
    ("template missing", _with(template=DELETE), [(None, "$.template")]),
    ("max_split_parts 0", _with(max_split_parts=0),
     [(None, "$.max_split_parts")]),
    ("max_split_parts 1001", _with(max_split_parts=1001),
     [(None, "$.max_split_parts")]),
    ("split_max_chars 0", _with(split_max_chars=0),
     [(None, "$.split_max_chars")]),
    ("split_max_chars 100001", _with(split_max_chars=100001),
     [(None, "$.split_max_chars")]),
    ("campaign_id differs", _with(campaign_id="other"),
     [(None, "$.campaign_id")]),
    ("message_id boolean", _msgs({0: {"message_id": True}}),
     [(0, "$.messages[0].message_id")]),
    ("message_id null", _msgs({0: {"message_id": None}}),
     [(0, "$.messages[0].message_id")]),
    ("message_id object", _msgs({3: {"message_id": {"a": 1}}}),
     [(3, "$.messages[3].message_id")]),
    ("lead_id 257 bytes", _msgs({2: {"lead_id": "l" * 257}}),
     [(2, "$.messages[2].lead_id")]),
    ("vars an array", _msgs({0: {"vars": [1]}}), [(0, "$.messages[0].vars")]),
    ("message not an object", _with(messages=[msg("m-ok", "l-ok"), "m-2"]),
     [(1, "$.messages[1]")]),
    # message ids are unique within a batch; 7 and "7" are the same id
    ("message_id repeated as 7 and \"7\"",
     _msgs({0: {"message_id": 7}, 2: {"message_id": "7"}}),
     [(2, "$.messages[2].message_id")]),
    ("message_id three times",
     _msgs({1: {"message_id": "m"}, 2: {"message_id": "m"},
            3: {"message_id": "m"}}),
     [(2, "$.messages[2].message_id"), (3, "$.messages[3].message_id")]),
    # end_time: 0001..9999 in UTC, real leap seconds only
    ("end_time year 10000 in UTC",
     _with(end_time="9999-12-31T23:59:59-23:59"), [(None, "$.end_time")]),
    ("end_time year 0 in UTC",
     _with(end_time="0001-01-01T00:00:00+00:01"), [(None, "$.end_time")]),
    ("end_time leap second on an ordinary day",
     _with(end_time="2026-06-30T23:59:60Z"), [(None, "$.end_time")]),
    # a template or a prompt (composed by a model), exactly one
    ("template and prompt", _with(prompt={"user": "u"}),
     [(None, "$.prompt")]),
    ("template null and prompt", _with(template=None, prompt={"user": "u"}),
     [(None, "$.prompt")]),
    ("prompt a string", _prompt("Write to {{lead.name}}"),
     [(None, "$.prompt")]),
    ("prompt null", _with(template=DELETE, prompt=None),
     [(None, "$.prompt")]),
    ("prompt without user", _prompt({"system": "s"}),
     [(None, "$.prompt.user")]),
    ("prompt.user empty", _prompt({"user": ""}), [(None, "$.prompt.user")]),
    ("prompt.user a number", _prompt({"user": 1}),
     [(None, "$.prompt.user")]),
    ("prompt.user 65537 bytes", _prompt({"user": "u" * 65537}),
     [(None, "$.prompt.user")]),
    ("prompt.system empty", _prompt({"user": "u", "system": ""}),
     [(None, "$.prompt.system")]),
    ("prompt.system an array", _prompt({"user": "u", "system": ["s"]}),
     [(None, "$.prompt.system")]),
    ("prompt.system 65537 bytes",
     _prompt({"user": "u", "system": "s" * 65537}),
     [(None, "$.prompt.system")]),
    ("prompt with another member",
     _prompt({"user": "u", "assistant": "a"}),
     [(None, "$.prompt.assistant")]),
    ("prompt.User misspelt", _prompt({"User": "u"}),
     [(None, "$.prompt.User"), (None, "$.prompt.user")]),
    ("model empty", _prompt(model=""), [(None, "$.model")]),
    ("model a number", _prompt(model=4), [(None, "$.model")]),
    ("model 257 bytes", _prompt(model="m" * 257), [(None, "$.model")]),
    ("max_tokens 0", _prompt(max_tokens=0), [(None, "$.max_tokens")]),
    ("max_tokens 8193", _prompt(max_tokens=8193), [(None, "$.max_tokens")]),
    ("max_tokens fractional", _prompt(max_tokens=10.5),
     [(None, "$.max_tokens")]),
    ("max_tokens a string", _prompt(max_tokens="10"),
     [(None, "$.max_tokens")]),
    ("temperature negative", _prompt(temperature=-0.1),
     [(None, "$.temperature")]),
    ("temperature 2.01", _prompt(temperature=2.01),
     [(None, "$.temperature")]),
    ("temperature a string", _prompt(temperature="0.5"),
     [(None, "$.temperature")]),
    # the model's fields mean nothing to a template
    ("model without prompt", _with(model="openai/gpt-4o-mini"),
     [(None, "$.model")]),
    ("max_tokens and temperature without prompt",
     _with(max_tokens=100, temperature=1),
     [(None, "$.max_tokens"), (None, "$.temperature")]),
    ("neither, with a model", _with(template=DELETE, model="m"),
     [(None, "$.template"), (None, "$.model")]),
]


def _paths(errors):
    return [(e.get("index"), e.get("path")) for e in errors]


@pytest.fixture
def ingest(pipeline):
    return campaign_ingest(pipeline, campaign_max_messages=MAX_MESSAGES)


def _post(ingest, body, campaign_id="cmp-1", content_type="application/json"):
    return ingest.request("POST", f"/v1/campaigns/{campaign_id}/batches",
                          body, content_type=content_type)


def test_bad_batches_422_all_errors_nothing_published(pipeline, services,
                                                      ingest):
    before = services.topic_count(pipeline.topic)
    failures = []
    for name, body, want in BAD:
        r = _post(ingest, body)
        j = r.json or {}
        errs = j.get("errors")
        problem = None
        if r.status != 422:
            problem = f"status {r.status}"
        elif j.get("error") != "schema_violation":
            problem = f"error {j.get('error')!r}"
        elif not isinstance(errs, list):
            problem = "no errors list"
        elif sorted(_paths(errs), key=str) != sorted(want, key=str):
            problem = f"errors {_paths(errs)}, want {want}"
        elif j.get("path") != errs[0].get("path") or not j.get("message"):
            problem = "top-level path/message do not repeat the first error"
        elif not all(e.get("message") for e in errs):
            problem = "an error without a message"
        elif any("index" in e for e in errs
                 if not e["path"].startswith("$.messages[")):
            problem = "a top-level error with an index"
        if problem:
            failures.append(f"{name}: {problem}: {r!r}")
    assert not failures, "\n".join(failures)
    assert services.topic_count(pipeline.topic) == before, \
        "a refused batch reached Kafka"


def test_bad_requests(pipeline, services, ingest):
    before = services.topic_count(pipeline.topic)
    cases = [
        ("not JSON", b"run_id=r1&x=2", 400),
        ("truncated JSON", json.dumps(_good()).encode()[:-3], 400),
        ("trailing garbage", json.dumps(_good()).encode() + b" ]", 400),
        ("a JSON array", b"[1, 2]", (400, 422)),
        ("a JSON string", b'"batch"', (400, 422)),
        ("empty body", b"", (400, 411)),
    ]
    failures = []
    for name, body, want in cases:
        r = _post(ingest, body)
        ok = r.status in want if isinstance(want, tuple) else \
            r.status == want
        if not ok or not (r.json and r.json.get("error")):
            failures.append(f"{name}: want {want}, got {r!r}")
    assert not failures, "\n".join(failures)
    assert services.topic_count(pipeline.topic) == before


def test_accepted_batch_record(pipeline, services, ingest):
    """202 after Kafka: the record is keyed by run_id, holds the body byte
    for byte, with the kind/event-type/campaign-id headers."""
    b = _good(run=f"{pipeline.prefix}run-α", n=MAX_MESSAGES)
    b["messages"][0]["message_id"] = 12345678901234
    b["messages"][1]["lead_id"] = 42
    b["end_time"] = when(7200, -150)            # -02:30
    b["campaign_id"] = "cmp-ok"
    b["max_split_parts"] = 1000
    b["split_max_chars"] = 100000
    # Odd spacing, unicode unescaped, keys out of order, trailing newline.
    raw = (json.dumps(dict(reversed(list(b.items()))), ensure_ascii=False,
                      indent=3) + "\n").encode("utf-8")
    before = services.topic_count(pipeline.topic)
    r = _post(ingest, raw, campaign_id="cmp-ok")
    assert r.status == 202, r
    j = r.json
    assert j["status"] == "accepted" and j["id"], j
    assert j["runId"] == b["run_id"], j
    assert j["eventType"] == "campaign.batch", j

    # The minimal batch: run_id of 256 bytes, defaults, 1 message.
    small = batch("r" * 256, [msg("m" * 256, "l" * 256)], "i" * 256)
    r2 = _post(ingest, small, campaign_id="cmp-2")
    assert r2.status == 202, r2
    assert services.topic_count(pipeline.topic) == before + 2

    recs = services.topic_records(pipeline.topic)
    mine = [x for x in recs if x["value"] == raw]
    assert len(mine) == 1, (
        f"no record holds the body byte for byte; values: "
        f"{[x['value'][:80] for x in recs]}")
    rec = mine[0]
    assert rec["key"] == b["run_id"].encode("utf-8"), rec["key"]
    h = rec["headers"]
    assert h.get("kind") == b"campaign", h
    assert h.get("event-type") == b"campaign.batch", h
    assert h.get("campaign-id") == b"cmp-ok", h
    other = [x for x in recs if x["key"] == b"r" * 256]
    assert len(other) == 1 and other[0]["headers"].get("campaign-id") == \
        b"cmp-2", other


def test_prompt_batch_accepted(pipeline, services, ingest):
    """A batch with a prompt instead of a template is one record like any
    other: at the limits of every field, and with the prompt alone."""
    full = _prompt({"system": "s" * 65536, "user": "Hi {{lead.name}} " +
                    "é" * 32000},
                   model="m" * 256, max_tokens=8192, temperature=2)
    full["run_id"] = f"{pipeline.prefix}run-prompt-full"
    low = _prompt({"user": "{{ never closed"}, max_tokens=1, temperature=0)
    low["run_id"] = f"{pipeline.prefix}run-prompt-low"
    bare = _prompt()
    bare["run_id"] = f"{pipeline.prefix}run-prompt-bare"
    before = services.topic_count(pipeline.topic)
    sent = []
    for b in (full, low, bare):
        raw = json.dumps(b, ensure_ascii=False).encode("utf-8")
        r = _post(ingest, raw)
        assert r.status == 202, (b["run_id"], r)
        assert r.json["runId"] == b["run_id"], r.json
        sent.append(raw)
    assert services.topic_count(pipeline.topic) == before + 3
    values = {x["value"] for x in services.topic_records(pipeline.topic)}
    assert all(raw in values for raw in sent), \
        "a prompt batch not published byte for byte"


def test_no_campaign_source_404(pipeline, services):
    # The pipeline's default ingest: one transcript source, no campaign.
    ingest = pipeline.start_ingest()
    r = ingest.request("POST", "/v1/campaigns/cmp-1/batches", _good())
    assert r.status == 404, r
    assert services.topic_count(pipeline.topic) == 0
    # The same with a campaign source: accepted.
    ingest2 = campaign_ingest(pipeline)
    r = ingest2.request("POST", "/v1/campaigns/cmp-1/batches", _good())
    assert r.status == 202, r


def test_message_limit_default_and_exact(pipeline, services):
    """campaign_max_messages defaults to 1000: 1000 pass, 1001 do not."""
    ingest = campaign_ingest(pipeline)
    ok = _good(n=1000)
    r = _post(ingest, ok)
    assert r.status == 202, r
    over = copy.deepcopy(ok)
    over["messages"].append(msg("one-more", "lead-x"))
    r = _post(ingest, over)
    assert r.status == 422, r
    assert r.json and r.json.get("path") == "$.messages", r
