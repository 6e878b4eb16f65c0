# Helpers of the composer tests (docs/campaigns.md, "Composition by a
# model"): a worker pointed at the model stub (the `llm` fixture of
# conftest.py), batches with a prompt, and the outbox rows with the model's
# figures.

from campaign_util import add_inbox, batch, msg, post_batch, uid, wait_run

KEY = "sk-test-0123456789abcdef"
PROMPT = {"system": "You write short friendly messages.",
          "user": "Write to {{lead.name}} about {{vars.topic}}"}


def compose_settings(pipeline, stub, **over):
    """The worker settings that point its composer at `stub` (the key in a
    file, as in production), with short back-offs; `over` wins."""
    keyfile = pipeline.tmp / "model.key"
    keyfile.write_text(KEY + "\n")
    keyfile.chmod(0o600)  # a key others may read is refused
    s = {"composer__base_url": stub.base_url,
         "composer__api_key_file": str(keyfile),
         "composer__headers": "HTTP-Referer: https://sluice.example; "
                              "X-Title: sluice tests",
         "composer__default_model": "openai/gpt-4o-mini",
         "composer__timeout_ms": 5000,
         "retry_backoff_min_ms": 50,
         "retry_backoff_max_ms": 500,
         "redis_timeout_ms": 300}
    s.update(over)
    return s


def compose_worker(pipeline, stub, wait=True, **over):
    return pipeline.start_worker(wait=wait,
                                 **compose_settings(pipeline, stub, **over))


def prompt_batch(run, n, inbox, lead_prefix, first=0, **extra):
    """A batch of n messages {run}-m{i} to leads {lead_prefix}{i} with
    vars.topic t{i}, i from `first`, composed from PROMPT."""
    msgs = [msg(f"{run}-m{i}", f"{lead_prefix}{i}", {"topic": f"t{i}"})
            for i in range(first, first + n)]
    b = batch(run, msgs, inbox, **extra)
    del b["template"]
    b["prompt"] = dict(PROMPT)
    return b


def leads(services, prefix, n):
    """Leads {prefix}0..n-1 named Name0..Name{n-1}, in one statement."""
    ids = [f"{prefix}{i}" for i in range(n)]
    names = [f"Name{i}" for i in range(n)]
    services.query(
        "INSERT INTO leads (id, workspace_id, name, attributes)"
        " SELECT id, 'ws-test', name, '{}'::jsonb"
        " FROM unnest(%s::text[], %s::text[]) AS u(id, name)",
        (ids, names))


def outbox(services, run):
    """{message_id: (status, parts, error, model, prompt_tokens,
    completion_tokens, compose_ms)} of a run."""
    return {r[0]: r[1:] for r in services.query(
        "SELECT message_id, status, parts, error, model, prompt_tokens,"
        " completion_tokens, compose_ms FROM campaign_messages"
        " WHERE run_id = %s", (run,))}


def wait_done(services, run, n, timeout=60, worker=None):
    """The run is finished (n: its size, for the message)."""
    return wait_run(services, run,
                    lambda r: r is not None and r["status"] == "finished",
                    timeout=timeout, what=f"run {run} ({n} messages) "
                    "finished", worker=worker)


def composed_run(pipeline, services, ingest, n, worker=None):
    """A fresh inbox and n leads, a prompt batch for them posted to
    `ingest`, waited for until the run is finished; its run id."""
    inbox = add_inbox(services, uid("inbox-"))
    p = f"{pipeline.prefix}L"
    leads(services, p, n)
    run = uid("run-")
    post_batch(ingest, prompt_batch(run, n, inbox, p))
    wait_done(services, run, n, worker=worker)
    return run
