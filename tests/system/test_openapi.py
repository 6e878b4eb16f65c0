# The OpenAPI descriptions (schemas/openapi.yaml, schemas/openapi-worker.yaml)
# are valid, and the running daemons answer as they say: every status a
# request provokes is documented for its operation, its body validates
# against the documented schema, the headers documented as required are
# there, and every path not in the description is 404.  Every documented
# (path, method, status) of ingest is provoked at least once.

import base64
import hashlib
import hmac
import json
import re
import socket
import time
import uuid

import jsonschema
import yaml
from openapi_spec_validator import validate as validate_spec
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from campaign_util import batch, msg
from chat_util import meta_signature, raw, text_message, wa_id, wamid, webhook
from harness import (SCHEMA_DIR, free_port, http_request, raw_request,
                      transcript, wait_until)

INGEST_SPEC = SCHEMA_DIR / "openapi.yaml"
WORKER_SPEC = SCHEMA_DIR / "openapi-worker.yaml"
MAX_BODY = 65536
METHODS = ("get", "head", "post", "put", "delete", "patch", "options")

# Paths a daemon must answer 404 (in neither description).
UNDOCUMENTED = ["/", "/v1", "/v1/", "/v1/webhooks", "/v1/webhooks/",
                "/v1/webhooks/tavus/extra", "/v1/campaigns/c1",
                "/v1/campaigns/c1/batches/x", "/v1/campaigns//batches",
                "/v1/campaigns/c1/batch", "/v2/webhooks/tavus", "/healthz/",
                "/health", "/readyz/x", "/metrics.txt", "/METRICS",
                "/favicon.ico"]


# ---------------------------------------------------------------- the spec

class Spec:
    """One OpenAPI file: operations, responses and their schemas (with the
    file as a JSON Schema 2020-12 resource, so #/components refs resolve)."""

    def __init__(self, path):
        self.path = path
        self.uri = path.resolve().as_uri()
        self.doc = yaml.safe_load(path.read_text())
        res = Resource(contents=self.doc, specification=DRAFT202012)
        self.registry = Registry().with_resource(self.uri, res)

    def validate(self):
        validate_spec(self.doc, base_uri=self.uri)

    def _deref(self, obj, pointer):
        """An OpenAPI object that may be a local $ref: (object, pointer)."""
        while isinstance(obj, dict) and "$ref" in obj:
            ref = obj["$ref"]
            assert ref.startswith("#/"), f"{self.path}: non-local {ref}"
            pointer = ref[1:]
            obj = self.doc
            for part in ref[2:].split("/"):
                obj = obj[part.replace("~1", "/").replace("~0", "~")]
        return obj, pointer

    def operations(self):
        """[(path, method, status)] of every documented response."""
        out = []
        for path, item in self.doc["paths"].items():
            for m in METHODS:
                if m in item:
                    for status in item[m]["responses"]:
                        out.append((path, m.upper(), status))
            other = item.get("x-methods-not-allowed")
            if other:
                out += [(path, m, "405") for m in other["methods"]]
        return out

    def response(self, path, method):
        """{status: (response object, its JSON pointer)} for the operation,
        or, for a method the path lists as not allowed, its 405 alone."""
        item = self.doc["paths"][path]
        esc = "/paths/" + path.replace("~", "~0").replace("/", "~1")
        m = method.lower()
        if m in item:
            out = {}
            for status, resp in item[m]["responses"].items():
                out[status] = self._deref(
                    resp, f"{esc}/{m}/responses/{status}")
            return out, item[m]
        other = item.get("x-methods-not-allowed")
        assert other and method in other["methods"], (
            f"{method} {path} is in neither the operations nor "
            "x-methods-not-allowed")
        resp = {"$ref": "#/components/responses/MethodNotAllowed"}
        return {"405": self._deref(resp, "")}, {"x-allow": other["allow"]}

    def schema_validator(self, pointer):
        return jsonschema.Draft202012Validator(
            {"$ref": f"{self.uri}#{pointer}"}, registry=self.registry,
            format_checker=jsonschema.FormatChecker())

    def check(self, r, path, method, head=False):
        """What is wrong with response r to METHOD path (template)."""
        wrong = []
        responses, op = self.response(path, method)
        status = str(r.status)
        if status not in responses:
            return [f"status {status} is not documented for {method} {path}"
                    f" (documented: {sorted(responses)})"]
        resp, ptr = responses[status]
        for name, h in (resp.get("headers") or {}).items():
            h, hptr = self._deref(h, f"{ptr}/headers/{name}")
            value = r.headers.get(name.lower())
            if value is None:
                if h.get("required"):
                    wrong.append(f"required header {name} missing")
                continue
            errs = list(self.schema_validator(f"{hptr}/schema")
                        .iter_errors(value)) if "schema" in h else []
            wrong += [f"header {name}: {e.message}" for e in errs]
        if "x-allow" in op and r.headers.get("allow") != op["x-allow"]:
            wrong.append(f"Allow {r.headers.get('allow')!r}, expected "
                         f"{op['x-allow']!r}")
        content = resp.get("content")
        if head or not content:
            if r.body:
                wrong.append(
                    f"a body where none is documented: {r.body[:80]!r}")
            return wrong
        ctype = r.headers.get("content-type", "")
        key = ctype if ctype in content else None
        if key is None:
            base = ctype.split(";")[0].strip().lower()
            key = next((k for k in content
                        if k.split(";")[0].strip().lower() == base), None)
        if key is None:
            return wrong + [f"Content-Type {ctype!r} not documented "
                            f"(documented: {sorted(content)})"]
        media = content[key]
        if "schema" not in media:
            return wrong
        sptr = f"{ptr}/content/{key.replace('~', '~0').replace('/', '~1')}" \
               "/schema"
        if key.startswith("application/json"):
            try:
                value = json.loads(r.body)
            except ValueError:
                return wrong + [f"body is not JSON: {r.body[:200]!r}"]
        else:
            value = r.body.decode("utf-8", "replace")
        wrong += [f"body {'/'.join(map(str, e.absolute_path)) or '$'}: "
                  f"{e.message}" for e in
                  self.schema_validator(sptr).iter_errors(value)]
        return wrong


def metric_families(text):
    """Family names of a Prometheus text page; fails on a malformed line."""
    sample = re.compile(
        r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*"'
        r'(,[a-zA-Z_][a-zA-Z0-9_]*="[^"\\]*")*\})? '
        r'(-?[0-9.]+([eE][-+]?[0-9]+)?|NaN|[+-]Inf)( -?[0-9]+)?$')
    families = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            m = re.match(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) "
                         r"(counter|gauge|histogram|summary|untyped)$", line)
            if m:
                families.add(m.group(1))
            continue
        m = sample.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        name = re.sub(r"_(bucket|sum|count)$", "", m.group(1))
        families.add(name)
        families.add(m.group(1))
    return families


def test_spec_files_are_valid():
    for path in (INGEST_SPEC, WORKER_SPEC):
        spec = Spec(path)
        spec.validate()
        ids = []
        for p, item in spec.doc["paths"].items():
            for m in METHODS:
                if m in item:
                    ids.append(item[m]["operationId"])
                    for status in item[m]["responses"]:
                        resp, ptr = spec.response(p, m)[0][status]
                        for media in (resp.get("content") or {}).values():
                            if "schema" in media:
                                # resolvable, and itself a valid schema
                                spec.schema_validator(ptr).is_valid(None)
        assert len(ids) == len(set(ids)), f"{path}: repeated operationId"
    # The 2020-12 schemas in components are valid JSON Schemas.
    spec = Spec(INGEST_SPEC)
    for name in spec.doc["components"]["schemas"]:
        if name != "Transcript":
            jsonschema.Draft202012Validator.check_schema(
                spec.doc["components"]["schemas"][name])


# ---------------------------------------------------------------- ingest

def _whsec():
    return "whsec_" + base64.b64encode(uuid.uuid4().bytes * 2).decode()


def _sw_headers(secret, body, ts=None, wid=None):
    """Standard Webhooks headers, signed here with Python's hmac."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    wid = wid or f"msg_{uuid.uuid4().hex}"
    ts = str(int(time.time()) if ts is None else ts)
    mac = hmac.new(key, f"{wid}.{ts}.".encode() + body, hashlib.sha256)
    return {"webhook-id": wid, "webhook-timestamp": ts,
            "webhook-signature": "v1," + base64.b64encode(mac.digest())
            .decode()}


def _raw(method, path, body=b"", headers=None):
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in (headers or {}).items()) + "\r\n"
    return head.encode() + body


def _campaign(tag, n=2):
    run = f"run-{tag}-{uuid.uuid4().hex[:8]}"
    return batch(run, [msg(f"{run}-m{i}", f"lead-{i}") for i in range(n)],
                 "inbox-openapi")


class Checker:
    def __init__(self, spec):
        self.spec = spec
        self.seen = set()
        self.failures = []

    def run(self, daemon, name, method, path, template, body=None,
            headers=None, content_type="application/json", expect=None,
            raw_bytes=None):
        """One request; its answer is checked against the spec (and against
        `expect`, the status the case is meant to provoke)."""
        if raw_bytes is not None:
            r = raw_request(daemon.port, raw_bytes, timeout=60)
        else:
            r = http_request(daemon.port, method, path, body, headers,
                             content_type, timeout=60)
        daemon.assert_alive()
        wrong = self.spec.check(r, template, method, head=method == "HEAD")
        if expect is not None and r.status != expect:
            wrong.insert(0, f"status {r.status}, meant to provoke {expect}")
        if wrong:
            self.failures.append(f"{name}: {method} {path}: "
                                 + "; ".join(wrong) + f"  [got {r!r}]")
        else:
            self.seen.add((template, method, str(r.status)))
        return r


def test_ingest_matches_spec(pipeline, services):
    spec = Spec(INGEST_SPEC)
    sw_secret = _whsec()
    meta_secret = uuid.uuid4().hex
    token = "tok-" + uuid.uuid4().hex[:8]
    # A loaded machine may keep Kafka from confirming within the default
    # 5 s: the daemons that must answer 2xx wait up to 30 s.
    patient = 30000
    a = pipeline.start_ingest(
        max_body_bytes=MAX_BODY, delivery_timeout_ms=patient, **{
            "source.signed.kind": "transcript",
            "source.signed.signature": "standard-webhooks",
            "source.signed.secret": sw_secret,
            "source.leads.kind": "lead_updated",
            "source.leads.signature": "none",
            "source.wa.kind": "chat", "source.wa.signature": "meta",
            "source.wa.secret": meta_secret,
            "source.wa.verify_token": token,
            "source.wa.success_status": 200,
            "source.wa204.kind": "chat", "source.wa204.signature": "none",
            "source.wa204.success_status": 204,
            "source.camp.kind": "campaign", "source.camp.signature": "none",
            "source.lim.kind": "transcript", "source.lim.signature": "none",
            "source.lim.rate": "1/h", "source.lim.burst": 1})
    # A campaign source that is signed and answers 200.
    c = pipeline.start_ingest(delivery_timeout_ms=patient, **{
        "source.camp.kind": "campaign",
        "source.camp.signature": "standard-webhooks",
        "source.camp.secret": sw_secret,
        "source.camp.success_status": 200})
    # One that answers 204, rate limited.
    d = pipeline.start_ingest(delivery_timeout_ms=patient, **{
        "source.camp.kind": "campaign", "source.camp.signature": "none",
        "source.camp.success_status": 204, "source.camp.rate": "1/h",
        "source.camp.burst": 1})
    # Kafka unreachable (a port nobody listens on): 503s.
    b = pipeline.start_ingest(
        brokers=f"127.0.0.1:{free_port()}", delivery_timeout_ms=300,
        retry_after_s=7, **{"source.camp.kind": "campaign",
                            "source.camp.signature": "none"})

    ck = Checker(spec)
    W = "/v1/webhooks/{source}"
    C = "/v1/campaigns/{campaign_id}/batches"
    good = json.dumps(transcript(pipeline.cid("ok"), [("user", "hi")])
                      ).encode()

    # -- webhooks: successes
    ck.run(a, "transcript", "POST", "/v1/webhooks/tavus", W, good,
           expect=202)
    ck.run(a, "signed", "POST", "/v1/webhooks/signed", W, good,
           headers=_sw_headers(sw_secret, good), expect=202)
    h = _sw_headers(sw_secret, good)
    h["webhook-signature"] = "v1,Zm9v " + h["webhook-signature"]
    ck.run(a, "several signatures", "POST", "/v1/webhooks/signed", W, good,
           headers=h, expect=202)
    ck.run(a, "lead update", "POST", "/v1/webhooks/leads", W,
           {"lead_id": "L-openapi"}, expect=202)
    ck.run(a, "lead update, integer id", "POST", "/v1/webhooks/leads", W,
           {"lead_id": 12345}, expect=202)
    chat = raw(webhook("15550001111", [text_message(wamid(), wa_id(), "hi")]))
    ck.run(a, "chat, Meta-signed", "POST", "/v1/webhooks/wa", W, chat,
           headers={"X-Hub-Signature-256": meta_signature(meta_secret, chat)},
           expect=200)
    other = raw(webhook("15550001111", field="account_update",
                        value={"ban_info": {}}))
    ck.run(a, "chat, nothing for sluice", "POST", "/v1/webhooks/wa", W,
           other, headers={"X-Hub-Signature-256":
                           meta_signature(meta_secret, other)}, expect=200)
    ck.run(a, "chat, 204", "POST", "/v1/webhooks/wa204", W, chat,
           expect=204)
    ck.run(a, "handshake", "GET", f"/v1/webhooks/wa?hub.mode=subscribe"
           f"&hub.verify_token={token}&hub.challenge=31337", W, expect=200)

    # -- webhooks: refusals
    ck.run(a, "handshake, wrong token", "GET", "/v1/webhooks/wa?hub.mode="
           "subscribe&hub.verify_token=nope&hub.challenge=1", W, expect=403)
    ck.run(a, "GET, unknown source", "GET", "/v1/webhooks/nosuch", W,
           expect=404)
    ck.run(a, "GET on a transcript source", "GET", "/v1/webhooks/tavus", W,
           expect=405)
    ck.run(a, "malformed JSON", "POST", "/v1/webhooks/tavus", W,
           b'{"conversation_id": ', expect=400)
    ck.run(a, "not UTF-8", "POST", "/v1/webhooks/tavus", W,
           b'{"conversation_id":"c-\xff","event_type":"x"}', expect=400)
    ck.run(a, "repeated key", "POST", "/v1/webhooks/tavus", W,
           b'{"conversation_id":"a","conversation_id":"b","event_type":"x"}',
           expect=400)
    ck.run(a, "bad webhook-id", "POST", "/v1/webhooks/tavus", W, good,
           headers={"webhook-id": "has space"}, expect=400)
    ck.run(a, "Content-Length: 0", "POST", "/v1/webhooks/tavus", W, b"",
           expect=400)
    ck.run(a, "conflicting Content-Length", "POST", "/v1/webhooks/tavus", W,
           raw_bytes=_raw("POST", "/v1/webhooks/tavus", good, {
               "Content-Type": "application/json",
               "Content-Length": str(len(good)),
               "content-length": str(len(good) + 1)}), expect=400)
    ck.run(a, "no signature", "POST", "/v1/webhooks/signed", W, good,
           expect=401)
    ck.run(a, "stale timestamp", "POST", "/v1/webhooks/signed", W, good,
           headers=_sw_headers(sw_secret, good, ts=int(time.time()) - 301),
           expect=401)
    ck.run(a, "wrong secret", "POST", "/v1/webhooks/signed", W, good,
           headers=_sw_headers(_whsec(), good), expect=401)
    ck.run(a, "Meta signature missing", "POST", "/v1/webhooks/wa", W, chat,
           expect=401)
    ck.run(a, "unknown source", "POST", "/v1/webhooks/nosuch", W, good,
           expect=404)
    ck.run(a, "the campaign source by name", "POST", "/v1/webhooks/camp", W,
           good, expect=404)
    ck.run(a, "no body, no length", "POST", "/v1/webhooks/tavus", W,
           raw_bytes=_raw("POST", "/v1/webhooks/tavus", b"", {
               "Content-Type": "application/json",
               "Connection": "close"}), expect=411)
    big = json.dumps(transcript("c-big", [("user", "x" * MAX_BODY)])).encode()
    ck.run(a, "over max_body_bytes", "POST", "/v1/webhooks/tavus", W, big,
           expect=413)
    ck.run(a, "declared far over the limit", "POST", "/v1/webhooks/tavus", W,
           raw_bytes=_raw("POST", "/v1/webhooks/tavus", b"", {
               "Content-Type": "application/json",
               "Content-Length": str(100 * MAX_BODY)}), expect=413)
    ck.run(a, "text/plain", "POST", "/v1/webhooks/tavus", W, good,
           content_type="text/plain", expect=415)
    ck.run(a, "no conversation_id", "POST", "/v1/webhooks/tavus", W,
           {"event_type": "x"}, expect=422)
    ck.run(a, "lead update without lead_id", "POST", "/v1/webhooks/leads", W,
           {"lead": 1}, expect=422)
    ck.run(a, "chat without entry", "POST", "/v1/webhooks/wa204", W,
           {"object": "whatsapp_business_account"}, expect=422)
    ck.run(a, "first of the hour", "POST", "/v1/webhooks/lim", W, good,
           expect=202)
    r = ck.run(a, "over the rate", "POST", "/v1/webhooks/lim", W, good,
               expect=429)
    assert r.headers.get("retry-after", "0").isdigit() and \
        int(r.headers["retry-after"]) > 1000, r.headers
    r = ck.run(b, "Kafka unreachable", "POST", "/v1/webhooks/tavus", W, good,
               expect=503)
    assert r.headers.get("retry-after") == "7", r.headers

    # -- campaign batches
    ck.run(a, "batch", "POST", "/v1/campaigns/cmp-1/batches", C,
           _campaign("a"), expect=202)
    body = json.dumps(_campaign("c")).encode()
    ck.run(c, "signed batch, 200", "POST", "/v1/campaigns/cmp-1/batches", C,
           body, headers=_sw_headers(sw_secret, body), expect=200)
    ck.run(c, "unsigned batch", "POST", "/v1/campaigns/cmp-1/batches", C,
           body, expect=401)
    ck.run(d, "batch, 204", "POST", "/v1/campaigns/cmp-1/batches", C,
           _campaign("d"), expect=204)
    r = ck.run(d, "batch over the rate", "POST",
               "/v1/campaigns/cmp-1/batches", C, _campaign("d2"), expect=429)
    r = ck.run(b, "batch, Kafka unreachable", "POST",
               "/v1/campaigns/cmp-1/batches", C, _campaign("b"), expect=503)
    assert r.headers.get("retry-after") == "7", r.headers
    ck.run(a, "batch, malformed", "POST", "/v1/campaigns/cmp-1/batches", C,
           b"run_id=1", expect=400)
    ck.run(a, "batch, no length", "POST", "/v1/campaigns/cmp-1/batches", C,
           raw_bytes=_raw("POST", "/v1/campaigns/cmp-1/batches", b"", {
               "Content-Type": "application/json",
               "Connection": "close"}), expect=411)
    huge = _campaign("big")
    huge["template"] = "x" * MAX_BODY
    ck.run(a, "batch too large", "POST", "/v1/campaigns/cmp-1/batches", C,
           huge, expect=413)
    ck.run(a, "batch as a form", "POST", "/v1/campaigns/cmp-1/batches", C,
           b"a=1", content_type="application/x-www-form-urlencoded",
           expect=415)
    bad = _campaign("bad", n=3)
    bad["messages"][0].pop("lead_id")
    bad["messages"][2]["message_id"] = ""
    bad["end_time"] = "tomorrow"
    r = ck.run(a, "batch, three problems", "POST",
               "/v1/campaigns/cmp-1/batches", C, bad, expect=422)
    assert r.json and len(r.json.get("errors", [])) == 3, r
    ck.run(a, "campaign id too long", "POST",
           f"/v1/campaigns/{'x' * 257}/batches", C, _campaign("l"),
           expect=404)
    ck.run(pipeline.start_ingest(), "no campaign source", "POST",
           "/v1/campaigns/cmp-1/batches", C, _campaign("n"), expect=404)

    # -- probes
    for path in ("/healthz", "/readyz", "/metrics"):
        ck.run(a, "probe", "GET", path, path, expect=200)
        r = ck.run(a, "probe, HEAD", "HEAD", path, path, expect=200)
        assert int(r.headers.get("content-length", "0")) > 0, r.headers
    ck.run(b, "not ready", "GET", "/readyz", "/readyz", expect=503)

    # -- status and admin (loopback needs no token; a wrong one is 401)
    ck.run(a, "status", "GET", "/status", "/status", expect=200)
    ck.run(a, "wrong token", "GET", "/status", "/status",
           headers={"Authorization": "Bearer nope"}, expect=401)
    ck.run(a, "log level", "PUT", "/admin/log-level", "/admin/log-level",
           body="info", content_type="text/plain", expect=200)
    ck.run(a, "not a level", "PUT", "/admin/log-level", "/admin/log-level",
           body={"level": "loud"}, expect=422)
    ck.run(a, "wrong token", "PUT", "/admin/log-level", "/admin/log-level",
           body="info", content_type="text/plain",
           headers={"Authorization": "Bearer nope"}, expect=401)
    ck.run(b, "not ready, HEAD", "HEAD", "/readyz", "/readyz", expect=503)
    page = http_request(a.port, "GET", "/metrics").body.decode()
    served = {f for f in metric_families(page)
              if f.startswith(("sluice_", "process_"))}
    documented = set(spec.doc["paths"]["/metrics"]["get"]["x-metrics"])
    missing = documented - served
    if missing:
        ck.failures.append(f"documented metrics not served: {sorted(missing)}")
    undocumented = {f for f in served if not any(
        f == d or re.fullmatch(re.escape(d) + r"_(bucket|sum|count)", f)
        for d in documented)}
    if undocumented:
        ck.failures.append(f"metrics served but not in {INGEST_SPEC.name}: "
                           f"{sorted(undocumented)}")

    # -- methods a path does not serve
    for path, item in spec.doc["paths"].items():
        real = (path.replace("{source}", "tavus")
                .replace("{campaign_id}", "cmp-1"))
        for m in item.get("x-methods-not-allowed", {}).get("methods", []):
            ck.run(a, "method not served", m, real, path,
                   body=None if m in ("GET", "HEAD", "OPTIONS") else good,
                   expect=405)

    # -- methods libevent refuses itself: 501, connection closed, and a
    # request hidden in the body is never read as a second one
    inner = _raw("POST", "/v1/webhooks/tavus", good, {
        "Content-Type": "application/json",
        "Content-Length": str(len(good))})
    for m in ("TRACE", "QUERY"):
        data = _raw(m, "/healthz", inner,
                    {"Content-Length": str(len(inner))})
        with socket.create_connection(("127.0.0.1", a.port),
                                      timeout=10) as s:
            s.sendall(data)
            got = b""
            try:
                while chunk := s.recv(65536):
                    got += chunk
            except socket.timeout:
                got += b" <connection left open>"
        if not got.startswith(b"HTTP/1.1 501 ") or \
                got.count(b"HTTP/1.1 ") != 1:
            ck.failures.append(f"{m} with a request in its body: {got!r}")

    # -- everything else is 404
    for path in UNDOCUMENTED:
        for m in ("GET", "POST"):
            r = http_request(a.port, m, path, good if m == "POST" else None,
                             timeout=10)
            if r.status != 404:
                ck.failures.append(f"{m} {path}: {r.status}, expected 404 "
                                   "(not in the description)")
                continue
            wrong = spec.check(
                r, "/v1/webhooks/{source}", "POST")  # the NotFound response
            if wrong:
                ck.failures.append(f"{m} {path}: " + "; ".join(wrong))

    assert not ck.failures, (f"{len(ck.failures)} answers differ from "
                             f"{INGEST_SPEC.name}:\n  "
                             + "\n  ".join(ck.failures))
    unprovoked = sorted(set(spec.operations()) - ck.seen)
    assert not unprovoked, f"documented but never provoked: {unprovoked}"
    for d in (a, b, c, d):
        d.assert_alive()


# ---------------------------------------------------------------- worker

def test_worker_matches_spec(pipeline, services):
    """sluice-worker with `listen` set serves openapi-worker.yaml."""
    spec = Spec(WORKER_SPEC)
    port = free_port()
    worker = pipeline.start_worker(listen=f"127.0.0.1:{port}")
    worker.port = port
    ingest = pipeline.start_ingest(delivery_timeout_ms=30000)
    cid = pipeline.cid("w")
    assert ingest.post(transcript(cid, [("user", "hi")])).status == 202
    pipeline.wait_caught_up(timeout=60)

    ck = Checker(spec)
    ck.run(worker, "alive", "GET", "/healthz", "/healthz", expect=200)
    wait_until(lambda: http_request(port, "GET", "/readyz",
                                    timeout=5).status == 200, 30,
               message="the worker's /readyz to answer 200 with PostgreSQL, "
               "Redis and Kafka up")
    r = ck.run(worker, "ready", "GET", "/readyz", "/readyz", expect=200)
    if r.json:
        for dep in ("postgres", "redis", "kafka"):
            assert r.json[dep]["ok"] is True, r
        assert r.json["kafka"]["assigned"] == 4, r   # all 4 partitions
    ck.run(worker, "status", "GET", "/status", "/status", expect=200)
    ck.run(worker, "pause", "POST", "/admin/pause", "/admin/pause",
           expect=200)
    ck.run(worker, "resume", "POST", "/admin/resume", "/admin/resume",
           expect=200)
    ck.run(worker, "log level", "PUT", "/admin/log-level",
           "/admin/log-level", body="info", content_type="text/plain",
           expect=200)
    ck.run(worker, "not a level", "PUT", "/admin/log-level",
           "/admin/log-level", body={"level": "loud"}, expect=422)
    ck.run(worker, "wrong token", "GET", "/status", "/status",
           headers={"Authorization": "Bearer nope"}, expect=401)
    r = ck.run(worker, "metrics", "GET", "/metrics", "/metrics", expect=200)
    served = metric_families(r.body.decode())
    missing = set(spec.doc["paths"]["/metrics"]["get"]["x-metrics"]) - served
    assert not missing, f"documented metrics not served: {sorted(missing)}"
    for path in UNDOCUMENTED:
        r = http_request(port, "GET", path, timeout=10)
        if r.status != 404:
            ck.failures.append(f"GET {path}: {r.status}, expected 404")
    assert not ck.failures, "\n  ".join(ck.failures)
    worker.assert_alive()
