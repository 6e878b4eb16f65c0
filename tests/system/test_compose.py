# Campaign messages composed by a model (docs/campaigns.md, "Composition by
# a model"): sluice-worker against a local OpenAI-compatible server
# (llmstub.py, whose requests and answers are checked with the official
# `openai` package's types). Each failure kind changes exactly the rows and
# counters it should; a message already in the outbox is never sent to the
# model again.

import re
import time

import llmstub
from campaign_util import (add_inbox, campaign_ingest, check_counters,
                           post_batch, statuses, uid)
from compose_util import (KEY, PROMPT, compose_worker, leads, outbox,
                          prompt_batch, wait_done)
from harness import free_port, http_request, wait_until


def test_composed_messages_land_with_their_cost(pipeline, services, llm):
    ingest = campaign_ingest(pipeline)
    worker = compose_worker(pipeline, llm, composer__concurrency=4)
    inbox = add_inbox(services, uid("inbox-"))
    p = f"{pipeline.prefix}L"
    leads(services, p, 12)
    llm.set_latency(0.2)
    run = uid("run-")
    post_batch(ingest, prompt_batch(run, 12, inbox, p))
    wait_done(services, run, 12)
    rows = outbox(services, run)
    assert len(rows) == 12
    for i in range(12):
        status, parts, error, model, pt, ct, ms = rows[f"{run}-m{i}"]
        assert status == "ready", (status, error)
        # The stub answers "Hi " + the start of the rendered user prompt.
        assert parts == [f"Hi Write to Name{i} about t{i}"], parts
        assert model == "openai/gpt-4o-mini" and pt > 0 and ct > 0, rows
        assert ms >= 200, ms
    snap = llm.snapshot()
    assert snap["errors"] == [], snap["errors"]
    assert snap["total"] == 12 and snap["peak"] <= 4, snap
    for call in llm.calls:
        assert call.headers["authorization"] == f"Bearer {KEY}"
        assert call.headers["http-referer"] == "https://sluice.example"
        assert call.headers["x-title"] == "sluice tests"
        assert call.body["model"] == "openai/gpt-4o-mini"
        assert call.body["messages"][0] == {
            "role": "system", "content": PROMPT["system"]}
    # Keep-alive: the calls share a few connections.
    assert snap["connections"] <= 6, snap
    check_counters(services, [run])
    # Nothing of the prompt or the answer in the log at info; the key
    # never.
    log = worker.log_text()
    assert KEY not in log
    assert "Name3" not in log and "Write to" not in log
    line = [l for l in log.splitlines() if "campaign:" in l][-1]
    assert re.search(r"composed 12 \(12 calls, \d+ tokens, peak [1-4] in "
                     r"flight", line), line

    # The same batch again: every message is in the outbox, zero calls.
    llm.reset()
    post_batch(ingest, prompt_batch(run, 12, inbox, p))
    pipeline.wait_caught_up()
    assert llm.total() == 0
    assert outbox(services, run) == rows
    check_counters(services, [run])


def test_model_choice_and_no_model(pipeline, services, llm):
    """The batch's model, else workspaces.ai_model (read through Redis
    workspace:{id}), else composer.default_model; none: no_model, no
    call."""
    ingest = campaign_ingest(pipeline)
    worker = compose_worker(pipeline, llm, composer__default_model="")
    inbox = add_inbox(services, uid("inbox-"))
    p = f"{pipeline.prefix}L"
    leads(services, p, 2)
    ws = uid("ws-")
    services.query("INSERT INTO workspaces (id, ai_model) VALUES (%s, %s)",
                     (ws, "anthropic/claude-3.5-haiku"))
    r1, r2, r3 = uid("run-"), uid("run-"), uid("run-")
    post_batch(ingest, prompt_batch(r1, 1, inbox, p, workspace_id=ws))
    post_batch(ingest, prompt_batch(r2, 1, inbox, p, workspace_id=ws,
                                    model="mistralai/mistral-small"))
    post_batch(ingest, prompt_batch(r3, 2, inbox, p,
                                    workspace_id=uid("ws-none-")))
    for r in (r1, r2, r3):
        wait_done(services, r, 1)
    models = sorted(c.body["model"] for c in llm.calls)
    assert models == ["anthropic/claude-3.5-haiku",
                      "mistralai/mistral-small"], models
    assert {m: s for m, (s, _p, e, *_x) in outbox(services, r3).items()} \
        == {f"{r3}-m0": "failed", f"{r3}-m1": "failed"}
    assert all(e == "no_model" for (_s, _p, e, *_x)
               in outbox(services, r3).values())
    cached = services.redis().get(f"workspace:{ws}")
    assert cached is not None and b"claude-3.5-haiku" in cached, cached
    check_counters(services, [r1, r2, r3])
    del worker


def test_missing_var_fails_before_any_call(pipeline, services, llm):
    ingest = campaign_ingest(pipeline)
    compose_worker(pipeline, llm)
    inbox = add_inbox(services, uid("inbox-"))
    p = f"{pipeline.prefix}L"
    leads(services, p, 2)
    run = uid("run-")
    b = prompt_batch(run, 2, inbox, p)
    b["prompt"]["user"] = "Hello {{lead.name}}, {{vars.missing}}"
    post_batch(ingest, b)
    wait_done(services, run, 2)
    st = statuses(services, run)
    assert st == {f"{run}-m0": ("failed", "missing_var:vars.missing"),
                  f"{run}-m1": ("failed", "missing_var:vars.missing")}, st
    assert llm.total() == 0


def test_each_failure_kind(pipeline, services, llm):
    """400 fails at once; 5xx, 429 and malformed answers are retried;
    retries spent fail the message only; refusals fail compose_refused."""
    ingest = campaign_ingest(pipeline)
    port = free_port()
    compose_worker(pipeline, llm, composer__retries=2,
                   composer__concurrency=1, listen=f"127.0.0.1:{port}")
    inbox = add_inbox(services, uid("inbox-"))
    p = f"{pipeline.prefix}L"
    leads(services, p, 8)
    run = uid("run-")
    b = prompt_batch(run, 8, inbox, p)
    llm.script(llmstub.CONTEXT_LENGTH, marker="about t0")
    llm.script(llmstub.fail(503), times=2, marker="about t1")
    llm.script(llmstub.fail(500), times=3, marker="about t2")
    llm.script(llmstub.fail(429, retry_after=1), marker="about t3")
    llm.script(llmstub.MALFORMED, marker="about t4")
    llm.script(llmstub.content_filter(), marker="about t5")
    llm.script(llmstub.EMPTY, marker="about t6")
    post_batch(ingest, b)
    wait_done(services, run, 8, timeout=90)
    st = statuses(services, run)
    want = {0: ("failed", "compose_failed:400"),
            1: ("ready", None),
            2: ("failed", "compose_failed:500"),
            3: ("ready", None),
            4: ("ready", None),
            5: ("failed", "compose_refused"),
            6: ("failed", "compose_refused"),
            7: ("ready", None)}
    assert st == {f"{run}-m{i}": v for i, v in want.items()}, st
    per = {}
    for c in llm.calls:
        t = re.search(r"about (t\d)", llmstub.user_text(c.body)).group(1)
        per[t] = per.get(t, 0) + 1
    assert per == {"t0": 1, "t1": 3, "t2": 3, "t3": 2, "t4": 2, "t5": 1,
                   "t6": 1, "t7": 1}, per
    assert llm.snapshot()["errors"] == []
    check_counters(services, [run])
    # The counters say the same: each call by its outcome, the messages
    # written and failed, the 429 among them.
    want_calls = {"ok": 4, "refused": 2, "bad_request": 1,
                  "rate_limited": 1, "server_error": 5, "timeout": 0,
                  "connect": 0, "bad_answer": 1, "account": 0}

    def metrics():
        text = http_request(port, "GET", "/metrics", timeout=5).body.decode()
        got = {o: int(float(v)) for o, v in re.findall(
            r'^sluice_worker_composer_calls_total\{outcome="(\w+)"\} (\S+)',
            text, re.M)}
        return text if got == want_calls else None
    text = wait_until(metrics, 10, 0.2, f"composer calls {want_calls}")
    for name, v in (("messages_total", 4), ("messages_failed_total", 4),
                    ("rate_limited_total", 1)):
        assert re.search(rf"^sluice_worker_composer_{name} {v}$", text,
                         re.M), name
    tokens = re.findall(r'^sluice_worker_composer_tokens_total\{model="'
                        r'openai/gpt-4o-mini",type="(\w+)"\} (\d+)',
                        text, re.M)
    assert {t for t, _ in tokens} == {"prompt", "completion"} and \
        all(int(v) > 0 for _, v in tokens), tokens


def test_timeout_then_fail(pipeline, services, llm):
    ingest = campaign_ingest(pipeline)
    compose_worker(pipeline, llm, composer__retries=1,
                   composer__timeout_ms=500)
    inbox = add_inbox(services, uid("inbox-"))
    p = f"{pipeline.prefix}L"
    leads(services, p, 2)
    run = uid("run-")
    llm.script(llmstub.HANG, times=2, marker="about t0")
    post_batch(ingest, prompt_batch(run, 2, inbox, p))
    wait_done(services, run, 2)
    llm.unhang()
    st = statuses(services, run)
    assert st == {f"{run}-m0": ("failed", "compose_failed:timeout"),
                  f"{run}-m1": ("ready", None)}, st


def test_402_holds_the_batch_until_lifted(pipeline, services, llm):
    ingest = campaign_ingest(pipeline)
    port = free_port()
    worker = compose_worker(pipeline, llm, listen=f"127.0.0.1:{port}")
    inbox = add_inbox(services, uid("inbox-"))
    p = f"{pipeline.prefix}L"
    leads(services, p, 10)
    llm.hold(402)
    run = uid("run-")
    post_batch(ingest, prompt_batch(run, 10, inbox, p))

    def held():
        r = http_request(port, "GET", "/readyz", timeout=5)
        c = r.json.get("composer") if r.json else None
        return r if r.status == 503 and c and not c["ok"] else None
    r = wait_until(held, 20, 0.2, "/readyz to say the composer is held")
    assert "402" in r.json["composer"]["error"], r.json
    # Held for 20 s: nothing failed, nothing committed.
    time.sleep(20)
    assert statuses(services, run) == {}
    held_calls = llm.total()
    # The first wave (the window before the first 402 came back), then one
    # probe at a time, each after a back-off of at least half a second.
    starts = sorted(c.t_start for c in llm.calls)
    wave = [t for t in starts if t - starts[0] < 0.3]
    probes = starts[len(wave):]
    assert 1 <= len(wave) <= 8 and probes, starts
    gaps = [b - a for a, b in zip([wave[-1]] + probes, probes)]
    assert min(gaps) >= 0.45, gaps
    llm.lift()
    wait_done(services, run, 10, timeout=60)
    assert set(statuses(services, run).values()) == {("ready", None)}
    wait_until(lambda: http_request(port, "GET", "/readyz",
                                    timeout=5).status == 200, 10, 0.2,
               "/readyz ok once the credit is back")
    metrics = http_request(port, "GET", "/metrics", timeout=5).body.decode()
    assert re.search(r'^sluice_worker_composer_calls_total\{outcome='
                     r'"account"\} [1-9]', metrics, re.M), metrics
    held_s = float(re.search(r"^sluice_worker_composer_held_seconds_total "
                             r"(\S+)", metrics, re.M).group(1))
    assert held_s >= 19, held_s
    log = worker.log_text()
    assert len(re.findall(r"composer held", log)) <= held_calls
    check_counters(services, [run])


def test_a_probe_that_fails_does_not_stop_the_composer(pipeline, services,
                                                        llm):
    """Held on a 402, the credit comes back but the first probe after it
    times out: the next probe goes anyway and the batch completes."""
    ingest = campaign_ingest(pipeline)
    port = free_port()
    compose_worker(pipeline, llm, listen=f"127.0.0.1:{port}",
                   composer__timeout_ms=1000)
    inbox = add_inbox(services, uid("inbox-"))
    p = f"{pipeline.prefix}L"
    leads(services, p, 4)
    llm.hold(402)
    run = uid("run-")
    post_batch(ingest, prompt_batch(run, 4, inbox, p))
    wait_until(lambda: llm.count("held") >= 1, 20, 0.1, "a first 402")
    llm.script(llmstub.HANG, times=1)
    llm.lift()
    wait_done(services, run, 4, timeout=60)
    llm.unhang()
    assert set(statuses(services, run).values()) == {("ready", None)}
    assert llm.count("hang") == 1
    check_counters(services, [run])


def test_no_endpoint_fails_without_a_call(pipeline, services):
    """composer.base_url unset: a prompt batch's messages fail
    compose_failed:not_configured, with no model figures stored."""
    ingest = campaign_ingest(pipeline)
    pipeline.start_worker(redis_timeout_ms=300,
                          composer__default_model="m")
    inbox = add_inbox(services, uid("inbox-"))
    p = f"{pipeline.prefix}L"
    leads(services, p, 2)
    run = uid("run-")
    post_batch(ingest, prompt_batch(run, 2, inbox, p))
    wait_done(services, run, 2)
    rows = outbox(services, run)
    assert rows == {
        f"{run}-m{i}": ("failed", None, "compose_failed:not_configured",
                        None, None, None, None) for i in range(2)}, \
        repr([r[6] for r in rows.values()])
    check_counters(services, [run])
