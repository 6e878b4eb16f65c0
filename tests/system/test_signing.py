# Standard Webhooks as its reference library signs them (PyPI
# `standardwebhooks`, the implementation the specification links to):
# every secret shape that library accepts is accepted by the same setting
# here, and what it signs is accepted, byte for byte; what it would refuse
# is refused.

import base64
import json
import os
import uuid
from datetime import datetime, timedelta, timezone

from standardwebhooks.webhooks import Webhook

from harness import transcript


def _secrets():
    """name -> the secret as configured; each is one the reference library
    takes (it pads unpadded base64 and the whsec_ prefix is optional)."""
    out = {}
    for n in (24, 32, 64, 23, 22):        # 23 and 22 bytes: unpadded forms
        raw = os.urandom(n)
        b64 = base64.b64encode(raw).decode()
        out[f"whsec{n}"] = "whsec_" + b64
        out[f"nopad{n}"] = "whsec_" + b64.rstrip("=")
        out[f"bare{n}"] = b64
    return out


def _signed(secret, body, wid=None, when=None):
    wh = Webhook(secret)
    wid = wid or f"msg_{uuid.uuid4().hex}"
    when = when or datetime.now(tz=timezone.utc)
    return {"webhook-id": wid,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": wh.sign(wid, when, body)}


def _one_source(pipeline, name, nbytes=32):
    """An ingest with one standard-webhooks source `name` and a fresh
    secret: (ingest, secret, conversation id, a transcript body)."""
    secret = "whsec_" + base64.b64encode(os.urandom(nbytes)).decode()
    ingest = pipeline.start_ingest(**{
        f"source__{name}__kind": "transcript",
        f"source__{name}__signature": "standard-webhooks",
        f"source__{name}__secret": secret})
    cid = pipeline.cid(name)
    body = json.dumps(transcript(cid, [("user", "Hi")])).encode()
    return ingest, secret, cid, body


def test_reference_signer_every_secret_shape(pipeline):
    secrets = _secrets()
    over = {}
    for name, secret in secrets.items():
        over[f"source__{name}__kind"] = "transcript"
        over[f"source__{name}__signature"] = "standard-webhooks"
        over[f"source__{name}__secret"] = secret
    ingest = pipeline.start_ingest(**over)
    for name, secret in secrets.items():
        cid = pipeline.cid(name)
        # Raw UTF-8 and unusual spacing: the body is signed as sent.
        body = json.dumps(transcript(cid, [("user", "olá — ✓")]),
                          ensure_ascii=False, indent=1).encode()
        h = _signed(secret, body)
        Webhook(secret).verify(body, h)      # the library agrees with itself
        r = ingest.post(body, source=name, headers=h)
        assert r.status == 202, f"{name} ({secret[:10]}...): {r!r}"
        assert r.json["id"] == h["webhook-id"], r.json


def test_reference_signer_refusals(pipeline):
    ingest, secret, _cid, body = _one_source(pipeline, "ref")
    other = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    now = datetime.now(tz=timezone.utc)

    # Several signatures, one of them right (a secret being rotated).
    h = _signed(secret, body)
    h["webhook-signature"] = " ".join(
        [_signed(other, body, h["webhook-id"])["webhook-signature"],
         h["webhook-signature"]])
    r = ingest.post(body, source="ref", headers=h)
    assert r.status == 202, r

    cases = {
        "another secret": (_signed(other, body), body),
        "a body changed after signing": (_signed(secret, body),
                                         body.replace(b"Hi", b"Ho")),
        "6 minutes old": (_signed(secret, body,
                                  when=now - timedelta(minutes=6)), body),
        "6 minutes ahead": (_signed(secret, body,
                                    when=now + timedelta(minutes=6)), body),
        "signed under another id": (
            dict(_signed(secret, body), **{"webhook-id": "msg_other"}),
            body),
    }
    for what, (headers, sent) in cases.items():
        r = ingest.post(sent, source="ref", headers=headers)
        assert r.status == 401, f"{what}: {r!r}"
        assert r.json["error"], r.json
    assert pipeline.services.topic_count(pipeline.topic) == 1


def test_svix_header_names(pipeline):
    """A sender built on Svix sends the same scheme under svix-* names."""
    ingest, secret, cid, body = _one_source(pipeline, "svix", 24)
    h = {k.replace("webhook-", "svix-"): v
         for k, v in _signed(secret, body).items()}
    r = ingest.post(body, source="svix", headers=h)
    assert r.status == 202, r
    assert r.json["id"] == h["svix-id"], r.json
    rec = [m for m in pipeline.services.topic_records(pipeline.topic)
           if m["key"] == cid.encode()]
    assert len(rec) == 1 and rec[0]["value"] == body
    assert rec[0]["headers"]["webhook-id"] == h["svix-id"].encode()
    # The names are one set: a svix-id with webhook-* signature headers
    # (or the other way round) is not mixed into one verification.
    h2 = _signed(secret, body)
    mixed = {"svix-id": h2["webhook-id"],
             "webhook-timestamp": h2["webhook-timestamp"],
             "webhook-signature": h2["webhook-signature"]}
    r = ingest.post(body, source="svix", headers=mixed)
    assert r.status == 401, r
    # Both present: the webhook-* set is the one verified.
    both = dict(h2, **{"svix-id": "msg_other", "svix-signature": "v1,AAAA"})
    r = ingest.post(body, source="svix", headers=both)
    assert r.status == 202, r
    assert r.json["id"] == h2["webhook-id"], r.json
