# The composer tests' model server (tests/system/llmstub.py), driven by the
# official `openai` Python client: if the client accepts its answers and it
# accepts the client's requests, it speaks the real API.  No sluice daemon
# is involved; these run in a few seconds.

import http.client
import json
import ssl
import threading
import time

import pytest

openai = pytest.importorskip("openai")

import llmstub  # noqa: E402
from llmstub import LLMStub  # noqa: E402

KEY = "sk-test-0123456789"


@pytest.fixture
def stub():
    s = LLMStub(api_key=KEY, model_map={
        "openai/gpt-4o-mini": "openai/gpt-4o-mini-2024-07-18"}).start()
    yield s
    s.stop()


def client(stub, **kw):
    kw.setdefault("max_retries", 0)
    kw.setdefault("timeout", 30)
    return openai.OpenAI(base_url=stub.base_url, api_key=KEY, **kw)


def ask(c, user, system="You write short messages.", model="openai/gpt-4o-mini",
        **kw):
    return c.chat.completions.create(
        model=model, messages=[{"role": "system", "content": system},
                               {"role": "user", "content": user}], **kw)


def test_answer_usage_model_and_request_record(stub):
    c = client(stub, default_headers={"HTTP-Referer": "https://x.example",
                                      "X-Title": "sluice"})
    r = ask(c, "Write to Ada Lovelace about the analytical engine offer",
            max_tokens=200, temperature=0.7)
    assert r.choices[0].message.content == \
        "Hi " + "Write to Ada Lovelace about the analytical engine offer"[:40]
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "openai/gpt-4o-mini-2024-07-18"
    # words: system 4 + user 9, + 4 per message; answer "Hi" + 7 words
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (21, 8)
    assert r.usage.total_tokens == 29
    [call] = stub.recorded()
    assert call.status == 200 and call.outcome == "ok" and call.error is None
    assert call.authorization == f"Bearer {KEY}"
    assert call.headers["http-referer"] == "https://x.example"
    assert call.headers["x-title"] == "sluice"
    assert call.body["max_tokens"] == 200 and call.body["temperature"] == 0.7
    assert [m["role"] for m in call.body["messages"]] == ["system", "user"]
    assert call.system == "You write short messages."
    assert call.duration is not None and call.duration >= 0
    # a model the map does not know is echoed as asked
    assert ask(c, "x", model="llama3.1:8b").model == "llama3.1:8b"
    stub.assert_clean()


def test_wrong_or_missing_key_is_401(stub):
    c = openai.OpenAI(base_url=stub.base_url, api_key="sk-revoked",
                      max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        ask(c, "hello")
    assert stub.count("unauthorized") == 1


def test_requests_the_api_refuses_are_recorded_and_answered_400(stub):
    def raw(body):
        conn = http.client.HTTPConnection("127.0.0.1", stub.port, timeout=10)
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Authorization": f"Bearer {KEY}",
                              "Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, json.loads(data)

    good = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    bad = [
        b"{not json",
        json.dumps({"messages": good["messages"]}),              # no model
        json.dumps({**good, "messages": []}),
        json.dumps({**good, "messages": [{"role": "usr", "content": "x"}]}),
        json.dumps({**good, "messages": [{"role": "user"}]}),
        json.dumps({**good, "max_tokens": "200"}),                # a string
        json.dumps({**good, "max_tokens": 0}),
        json.dumps({**good, "temperature": 2.5}),
        json.dumps({**good, "stream": True}),
        json.dumps({**good, "prompt": "x"}),                     # unknown
    ]
    for body in bad:
        status, answer = raw(body)
        assert status == 400, body
        assert answer["error"]["message"]
    assert raw(json.dumps(good))[0] == 200
    assert [e[0] for e in stub.errors] == ["request"] * len(bad)
    assert stub.count("invalid") == len(bad) and stub.count("ok") == 1
    with pytest.raises(AssertionError):
        stub.assert_clean()


def test_429_with_and_without_retry_after(stub):
    stub.script(llmstub.fail(429, retry_after=1))
    stub.script(llmstub.fail(429))
    c = client(stub)
    with pytest.raises(openai.RateLimitError) as e:
        ask(c, "one")
    assert e.value.response.headers["retry-after"] == "1"
    with pytest.raises(openai.RateLimitError) as e:
        ask(c, "two")
    assert "retry-after" not in e.value.response.headers
    # The client honours Retry-After: one retry, a second later, answered.
    stub.script(llmstub.fail(429, retry_after=1))
    t0 = time.monotonic()
    r = ask(client(stub, max_retries=1), "three")
    assert time.monotonic() - t0 >= 0.9
    assert r.choices[0].message.content == "Hi three"
    assert stub.snapshot()["counts"] == {"429_retry_after": 2, "429": 1,
                                         "ok": 1}


def test_rate_limit_token_bucket(stub):
    stub.set_rate(5, burst=5, retry_after="auto")
    c = client(stub)
    statuses = []
    for i in range(8):
        try:
            ask(c, f"n{i}")
            statuses.append(200)
        except openai.RateLimitError as e:
            statuses.append(429)
            assert int(e.response.headers["retry-after"]) >= 1
    assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
    time.sleep(0.5)                 # 2.5 tokens back
    ask(c, "again")
    assert stub.count("rate_limited_retry_after") == statuses.count(429)


def test_payment_hold_and_lift(stub):
    stub.hold(402)
    c = client(stub)
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as e:
            ask(c, "credit")
        assert e.value.status_code == 402
    stub.lift()
    assert ask(c, "credit").choices[0].message.content == "Hi credit"
    assert stub.count("held") == 3 and stub.count("ok") == 1


def test_scripted_failures_and_markers(stub):
    stub.script(llmstub.content_filter(), marker="[filter]")
    stub.script(llmstub.EMPTY, marker="[empty]")
    stub.script(llmstub.CONTEXT_LENGTH, marker="[long]")
    stub.script(llmstub.fail(403), marker="[403]")
    stub.script(llmstub.fail(503), times=2)
    c = client(stub)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            ask(c, "plain")
    assert ask(c, "plain").choices[0].message.content == "Hi plain"
    r = ask(c, "lead [filter]")
    assert r.choices[0].finish_reason == "content_filter"
    assert r.choices[0].message.content is None
    r = ask(c, "lead [empty]")
    assert r.choices[0].message.content == "" and r.usage.completion_tokens == 0
    with pytest.raises(openai.BadRequestError) as e:
        ask(c, "lead [long]")
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.PermissionDeniedError):
        ask(c, "lead [403]")
    # a marker's answer is used once: the next call is answered
    assert ask(c, "lead [filter]").choices[0].finish_reason == "stop"
    stub.assert_clean()


def test_malformed_and_hang(stub):
    stub.script(llmstub.MALFORMED)
    c = client(stub)
    # The client cannot parse it (a JSON error in this version).
    with pytest.raises((ValueError, openai.APIResponseValidationError)):
        ask(c, "x")
    stub.script(llmstub.HANG)
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask(client(stub, timeout=0.5), "y")
    assert time.monotonic() - t0 < 5
    stub.unhang()
    assert stub.snapshot()["counts"] == {"malformed": 1, "hang": 1}


def test_lognormal_latency_is_the_same_sequence_again(stub):
    stub.set_lognormal(0.02, 0.06, seed=7)
    c = client(stub)
    for i in range(5):
        ask(c, f"x{i}")
    first = stub.latencies()
    assert len(first) == 5 and all(x > 0 for x in first)
    assert all(call.duration >= call.latency for call in stub.recorded())
    stub.reset()
    stub.set_lognormal(0.02, 0.06, seed=7)
    for i in range(5):
        ask(c, f"x{i}")
    assert stub.latencies() == first


def test_forty_slow_calls_at_once_and_keep_alive(stub):
    stub.set_latency(1.0)
    c = client(stub)
    out, errors = [], []

    def one(i):
        try:
            out.append(ask(c, f"m{i}").choices[0].message.content)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    assert not errors and sorted(out) == sorted(f"Hi m{i}" for i in range(40))
    # Serially that would be 40 s: every call was in flight at once.
    assert took < 20 and stub.peak == 40
    # One client, its pool reused: the next 10 calls open no connection.
    stub.set_latency(0)
    before = stub.snapshot()["connections"]
    for i in range(10):
        ask(c, "again")
    assert stub.snapshot()["connections"] == before
    stub.assert_clean()


def test_https(tmp_path):
    cert, key = llmstub.make_cert(str(tmp_path))
    with LLMStub(certfile=cert, keyfile=key) as s:
        assert s.base_url.startswith("https://")
        import httpx2
        c = openai.OpenAI(base_url=s.base_url, api_key="k", max_retries=0,
                          http_client=httpx2.Client(verify=ssl.create_default_context(
                              cafile=cert)))
        assert ask(c, "secure").choices[0].message.content == "Hi secure"
        assert s.recorded()[0].authorization == "Bearer k"
