# An OpenAI-compatible model server for the composer tests and
# bench/compose.py: POST /v1/chat/completions, in this process, on a free
# loopback port (HTTPS when given a certificate and key).
#
# It speaks the real API, not our reading of it: every request body is
# checked against the official `openai` package's request type
# (CompletionCreateParamsNonStreaming, strictly, plus what the real API
# refuses beyond the type: unknown fields, no messages, out-of-range
# numbers); a request that does not match is answered 400 as the API does
# and recorded in `stub.errors`.  Every answer it builds is parsed with
# `openai.types.chat.ChatCompletion.model_validate` before it leaves (a
# failure there is the stub's own bug, also recorded in `stub.errors`).
#
# The answer to a good request is a chat.completion whose
# choices[0].message.content is reply(body), by default
# "Hi " + the first 40 characters of the last user message, so a test can
# tell the text came from the prompt; `usage` counts whitespace-separated
# words (prompt: every message's words + 4 per message; completion: the
# answer's words); `model` echoes the request's, or `model_map[model]`
# (providers report a dated version, e.g. "openai/gpt-4o-mini" answered
# as "openai/gpt-4o-mini-2024-07-18").
#
# Controls, all settable while it runs (one lock):
# - latency of the answered calls: fixed (`set_latency(s)`) or lognormal
#   (`set_lognormal(median, p95, seed)`), drawn in call-arrival order from a
#   fixed seed, so two runs that make the same number of calls see the same
#   sequence; `latencies()` gives the drawn values in arrival order (the
#   ideal-schedule computation uses them);
# - a rate limit (`set_rate(R, burst, retry_after)`): a token bucket of R
#   calls/s; a call beyond it is answered 429 at once, with `Retry-After`
#   (seconds, or "auto": the wait until the next token, rounded up) or
#   without;
# - scripted answers (`script(answer, times=1, marker=None)`): applied to
#   the next calls, or only to calls whose user message contains `marker`;
#   answers: fail(status, retry_after=None), HANG (never answers; stop()
#   or unhang() ends it by closing the connection), MALFORMED (200 with a
#   body that is not JSON), EMPTY (content ""), content_filter(),
#   CONTEXT_LENGTH (400 context_length_exceeded), and the 401/402/403
#   answers of the providers;
# - hold (`hold(402)` ... `lift()`): every call answered 402 (or the given
#   status) until lifted, as when the account's credit is spent;
# - `api_key`: when set, a call without `Authorization: Bearer <api_key>`
#   is answered 401.
#
# Recorded: every call (`calls`: a Call with its headers, raw and parsed
# body, status, outcome, arrival/end times and drawn latency), the calls by
# outcome (`counts`), requests in flight now and at most (`peak`), TCP
# connections accepted (`connections`, for keep-alive).  The in-flight
# count drops *before* the answer is written, so a client that keeps
# exactly K calls in flight is never seen at K + 1.

import json
import math
import random
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PATH = "/v1/chat/completions"

# The request type's fields (the real API answers 400 to any other).
_request_adapter = None
_request_fields = None
_lock_types = threading.Lock()


def _types():
    """(TypeAdapter of the request, its field names), built once: the
    openai types are large and take a moment to compile."""
    global _request_adapter, _request_fields
    with _lock_types:
        if _request_adapter is None:
            import typing

            from openai.types.chat.completion_create_params import \
                CompletionCreateParamsNonStreaming
            from pydantic import TypeAdapter
            _request_adapter = TypeAdapter(CompletionCreateParamsNonStreaming)
            _request_fields = frozenset(
                typing.get_type_hints(CompletionCreateParamsNonStreaming))
        return _request_adapter, _request_fields


def check_request(raw):
    """(body, None) for a request body the real API accepts, else
    (body or None, reason)."""
    try:
        body = json.loads(raw)
    except ValueError as exc:
        return None, f"body is not JSON: {exc}"
    if not isinstance(body, dict):
        return body, "body is not a JSON object"
    adapter, fields = _types()
    unknown = sorted(set(body) - fields)
    if unknown:
        return body, f"Unrecognized request argument supplied: {', '.join(unknown)}"
    try:
        # strict: "5" is not 5 (JSON mode still takes 1 for 1.0).
        value = adapter.validate_json(raw, strict=True)
        # The messages are an Iterable in the type: pydantic checks them
        # as they are iterated.
        messages = list(value["messages"])
    except Exception as exc:    # pydantic.ValidationError
        first = str(exc).splitlines()
        return body, " / ".join(first[:3])
    if not messages:
        return body, "messages: at least one message is required"
    for i, m in enumerate(body["messages"]):
        content = m.get("content")
        if not isinstance(content, str):
            # Valid for the API (content parts); a composer sends text.
            return body, f"messages[{i}].content is not a string"
    mt = body.get("max_tokens")
    if mt is not None and mt < 1:
        return body, "max_tokens: must be at least 1"
    t = body.get("temperature")
    if t is not None and not 0 <= t <= 2:
        return body, "temperature: must be between 0 and 2"
    return body, None


def validate_completion(obj):
    """Parse a chat.completion with the official type (raises if the
    stub built something the API never answers)."""
    from openai.types.chat import ChatCompletion
    return ChatCompletion.model_validate(obj)


def user_text(body):
    """The last user message's content ('' when none)."""
    if not isinstance(body, dict):
        return ""
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else ""
    return ""


def system_text(body):
    if not isinstance(body, dict):
        return ""
    for m in body.get("messages") or []:
        if isinstance(m, dict) and m.get("role") == "system":
            c = m.get("content")
            return c if isinstance(c, str) else ""
    return ""


def default_reply(body):
    return "Hi " + user_text(body)[:40]


def words(text):
    return len(text.split()) if text else 0


def usage_for(body, answer):
    """The usage block the stub reports for a request and its answer."""
    msgs = body.get("messages") or []
    prompt = sum(words(m.get("content")) + 4 for m in msgs
                 if isinstance(m.get("content"), str))
    completion = words(answer)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def error_body(message, type_="invalid_request_error", code=None,
               param=None):
    return {"error": {"message": message, "type": type_, "param": param,
                      "code": code}}


# ---------------------------------------------------------- answers ----

@dataclass(frozen=True)
class Answer:
    """A scripted answer. kind: "error" (status + JSON body), "hang",
    "malformed", "completion" (a 200 chat.completion with this content and
    finish_reason)."""
    kind: str
    status: int = 200
    body: dict = None
    retry_after: object = None          # seconds (int/str) or None
    content: object = None
    finish_reason: str = "stop"
    name: str = ""

    @property
    def outcome(self):
        return self.name or self.kind


def fail(status, retry_after=None, message=None):
    """An error answer as the providers send it."""
    if status == 429:
        body = error_body(message or "Rate limit reached for requests",
                          "requests", "rate_limit_exceeded")
    elif status == 401:
        body = error_body(message or "Incorrect API key provided.",
                          "invalid_request_error", "invalid_api_key")
    elif status == 402:
        # OpenRouter's answer when the account's credit is spent.
        body = {"error": {"code": 402, "message": message or
                          "Insufficient credits. Add more using "
                          "https://openrouter.ai/settings/credits"}}
    elif status == 403:
        body = {"error": {"code": 403, "message": message or
                          "Your key is not allowed to use this model"}}
    elif status >= 500:
        body = error_body(message or "The server had an error while "
                          "processing your request.", "server_error")
    else:
        body = error_body(message or f"error {status}")
    return Answer("error", status, body, retry_after,
                  name=f"{status}" + ("_retry_after"
                                      if retry_after is not None else ""))


HANG = Answer("hang", name="hang")
MALFORMED = Answer("malformed", name="malformed")
EMPTY = Answer("completion", content="", name="empty")
CONTEXT_LENGTH = Answer(
    "error", 400, error_body(
        "This model's maximum context length is 128000 tokens. However, "
        "your messages resulted in 130012 tokens. Please reduce the length "
        "of the messages.", "invalid_request_error",
        "context_length_exceeded", "messages"), name="400_context_length")


def content_filter(content=None):
    """finish_reason "content_filter"; content null by default (Azure's
    way), or the given partial text."""
    return Answer("completion", content=content,
                  finish_reason="content_filter", name="content_filter")


def completion(content, finish_reason="stop"):
    return Answer("completion", content=content, finish_reason=finish_reason,
                  name="scripted")


# ------------------------------------------------------------ records ----

@dataclass
class Call:
    seq: int                    # arrival order, from 0
    t_start: float              # time.monotonic() when the body was read
    headers: dict               # lower-cased names
    raw: bytes
    body: object = None         # parsed JSON (None if it was not JSON)
    error: str = None           # why the request was refused (shape)
    status: int = None
    outcome: str = None
    latency: float = 0.0        # the drawn latency (answered calls)
    t_end: float = None         # when the answer was ready to leave
    response: object = None     # the answer's JSON (None if none/not JSON)

    @property
    def user(self):
        return user_text(self.body)

    @property
    def system(self):
        return system_text(self.body)

    @property
    def authorization(self):
        return self.headers.get("authorization")

    @property
    def duration(self):
        return None if self.t_end is None else self.t_end - self.t_start


# ------------------------------------------------------------- server ----

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def get_request(self):
        sock, addr = super().get_request()
        with self.stub._lock:
            self.stub.connections += 1
        if self.stub._tls is not None:
            # The handshake happens in the connection's thread (setup()),
            # never in the accept loop.
            sock = self.stub._tls.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        # A client that went away (timed out, reset): BrokenPipe etc.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as the composer reuses
    timeout = 300                   # an idle kept-alive connection ends

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()

    def _send(self, status, data, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        # Headers and body in one write: two small writes would meet the
        # client's delayed ACK (Nagle) and add ~40 ms to every call.
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(data)
        self.flush_headers()

    def do_GET(self):
        self._send(404, json.dumps(error_body("Not found")).encode())

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n > 0 else b""
        path = self.path.split("?", 1)[0]
        if path != PATH:
            self._send(404, json.dumps(error_body(
                f"Invalid URL (POST {path})")).encode())
            return
        stub = self.server.stub
        call, plan = stub._begin(
            {k.lower(): v for k, v in self.headers.items()}, raw)
        status, data, headers = 0, b"", []
        try:
            status, data, headers = stub._answer(call, plan)
        finally:
            stub._end(call, status, data)
        if status == 0:             # a hang: close without an answer
            self.close_connection = True
            return
        self._send(status, data, headers)


class LLMStub:
    def __init__(self, certfile=None, keyfile=None, api_key=None,
                 model_map=None, reply=None):
        self._lock = threading.Lock()
        self._tls = None
        if certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile, keyfile)
            self._tls = ctx
        self.api_key = api_key
        self.model_map = dict(model_map or {})
        self.reply = reply or default_reply
        self._fixed = 0.0
        self._lognormal = None      # (mu, sigma)
        self._rng = random.Random(0)
        self._rate = None           # calls/s
        self._burst = 1.0
        self._tokens = 0.0
        self._last_refill = 0.0
        self._retry_after = None
        self._script = []           # [marker, answer, remaining]
        self._hold = None           # status while held
        self._stopping = threading.Event()
        self._unhang = threading.Event()
        self._server = None
        self._thread = None
        self.port = None
        self._reset()

    def _reset(self):
        self.calls = []
        self.counts = Counter()
        self.errors = []            # (kind, seq, message)
        self.inflight = 0
        self.peak = 0
        self.connections = 0
        self._drawn = []            # (seq, latency)

    # -- set-up by the test or the bench
    def set_latency(self, seconds):
        with self._lock:
            self._fixed = seconds
            self._lognormal = None

    def set_lognormal(self, median, p95, seed):
        """Latencies drawn from a lognormal with this median and 95th
        percentile (seconds), from `seed`, in call-arrival order; calling it
        again starts the same sequence again."""
        with self._lock:
            sigma = (math.log(p95) - math.log(median)) / 1.6448536269514722
            self._lognormal = (math.log(median), sigma)
            self._rng = random.Random(seed)

    def set_rate(self, per_second, burst=None, retry_after=None):
        """Allow `per_second` calls/s (None: no limit), a bucket of `burst`
        calls (default: one second's worth); beyond, 429 with
        `Retry-After: retry_after` (seconds; "auto": until the next token,
        rounded up; None: no header)."""
        with self._lock:
            self._rate = per_second
            self._burst = float(burst if burst is not None
                                else max(1.0, per_second or 1.0))
            self._tokens = self._burst
            self._last_refill = time.monotonic()
            self._retry_after = retry_after

    def script(self, answer, times=1, marker=None):
        """Answer the next `times` calls (None: every call) with `answer`;
        with `marker`, only calls whose user message contains it."""
        with self._lock:
            self._script.append([marker, answer, times])

    def clear_script(self):
        with self._lock:
            self._script.clear()

    def hold(self, status=402):
        """Answer every call `status` (402: credit spent) until lift()."""
        with self._lock:
            self._hold = status

    def lift(self):
        with self._lock:
            self._hold = None

    def unhang(self):
        """End the hung calls (their connections close unanswered)."""
        self._unhang.set()

    def reset(self):
        """Forget the recorded calls and counters (the controls stay)."""
        with self._lock:
            self._reset()
            self.peak = self.inflight

    # -- reading what happened
    def snapshot(self):
        with self._lock:
            return {"total": len(self.calls), "counts": dict(self.counts),
                    "peak": self.peak, "inflight": self.inflight,
                    "errors": list(self.errors),
                    "connections": self.connections}

    def total(self):
        with self._lock:
            return len(self.calls)

    def count(self, outcome):
        with self._lock:
            return self.counts[outcome]

    def recorded(self):
        with self._lock:
            return list(self.calls)

    def latencies(self):
        """The latencies drawn for answered calls, in arrival order."""
        with self._lock:
            return [lat for _, lat in sorted(self._drawn)]

    def assert_clean(self):
        with self._lock:
            assert not self.errors, f"llmstub: {self.errors[:5]}"

    # -- the handler's side
    def _take_token(self, now):
        """True if the rate limit lets a call through now; else the
        seconds until the next token."""
        if self._rate is None:
            return True
        self._tokens = min(self._burst, self._tokens +
                           (now - self._last_refill) * self._rate)
        self._last_refill = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return (1.0 - self._tokens) / self._rate

    def _begin(self, headers, raw):
        now = time.monotonic()
        body, err = check_request(raw)
        with self._lock:
            call = Call(len(self.calls), now, headers, raw, body, err)
            self.calls.append(call)
            self.inflight += 1
            self.peak = max(self.peak, self.inflight)
            plan = self._plan(call, now)
            call.outcome = plan[0]
            self.counts[plan[0]] += 1
            if err is not None:
                self.errors.append(("request", call.seq, err))
            return call, plan

    def _plan(self, call, now):
        """(outcome, answer or None, latency) under the lock, in this
        order: hold, key, request shape, rate limit, script, answer."""
        if self._hold is not None:
            return "held", fail(self._hold), 0.0
        auth = call.headers.get("authorization", "")
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return "unauthorized", fail(
                401, message="Incorrect API key provided." if auth else
                "You didn't provide an API key."), 0.0
        if call.error is not None:
            return "invalid", Answer("error", 400, error_body(call.error)), 0.0
        tok = self._take_token(now)
        if tok is not True:
            ra = self._retry_after
            if ra == "auto":
                ra = max(1, math.ceil(tok))
            return ("rate_limited" + ("_retry_after" if ra is not None else ""),
                    fail(429, retry_after=ra), 0.0)
        user = call.user
        for entry in self._script:
            marker, answer, left = entry
            if marker is not None and marker not in user:
                continue
            if left is not None:
                entry[2] = left - 1
                if entry[2] <= 0:
                    self._script.remove(entry)
            return answer.outcome, answer, 0.0
        if self._lognormal is not None:
            lat = self._rng.lognormvariate(*self._lognormal)
        else:
            lat = self._fixed
        call.latency = lat
        self._drawn.append((call.seq, lat))
        return "ok", None, lat

    def _answer(self, call, plan):
        """(status, body bytes, headers) of a call; status 0: no answer."""
        outcome, answer, lat = plan
        if answer is None:
            if lat > 0:
                self._stopping.wait(lat)
            return self._completion(call, self.reply(call.body), "stop")
        if answer.kind == "hang":
            while not (self._stopping.is_set() or self._unhang.is_set()):
                self._stopping.wait(0.05)
            return 0, b"", []
        if answer.kind == "malformed":
            return 200, b'{"id": "chatcmpl-broken", "object": "chat.comp', []
        if answer.kind == "completion":
            return self._completion(call, answer.content, answer.finish_reason)
        headers = []
        if answer.retry_after is not None:
            headers.append(("Retry-After", str(answer.retry_after)))
        data = json.dumps(answer.body).encode()
        with self._lock:
            call.response = answer.body
        return answer.status, data, headers

    def _completion(self, call, content, finish_reason):
        body = call.body
        model = body.get("model", "")
        obj = {
            "id": f"chatcmpl-stub{call.seq:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model_map.get(model, model),
            "system_fingerprint": "fp_llmstub",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content,
                            "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": finish_reason,
            }],
            "usage": usage_for(body, content or ""),
        }
        try:
            validate_completion(obj)
        except Exception as exc:    # the stub's own bug: say so
            with self._lock:
                self.errors.append(("response", call.seq, str(exc)))
        with self._lock:
            call.response = obj
        return 200, json.dumps(obj).encode(), [
            ("x-request-id", f"req_stub{call.seq:06d}")]

    def _end(self, call, status, data):
        # Before the answer is written: a client that has it sees the
        # call ended.
        with self._lock:
            self.inflight -= 1
            call.status = status
            call.t_end = time.monotonic()

    # -- life cycle
    def start(self):
        _types()                    # compile the request type up front
        self._stopping.clear()
        self._unhang.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.stub = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05},
                                        name="llmstub", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()        # sleeping and hung handlers end now
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)
            self._server = None

    @property
    def base_url(self):
        """composer.base_url for the worker (it POSTs
        {base_url}/chat/completions)."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def make_cert(directory):
    """A self-signed certificate for 127.0.0.1 and localhost in
    directory: (certfile, keyfile); the cert is its own CA file."""
    cert = f"{directory}/llmstub-cert.pem"
    key = f"{directory}/llmstub-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj",
         "/CN=127.0.0.1", "-addext",
         "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True)
    return cert, key
