#!/usr/bin/env python3
"""A minimal chat agent for sluice's turns (docs/chat.md, "The agent's side").

It LISTENs on sluice_turns, claims turns with sluice_claim_turn(), "answers"
each one (prints the person's messages, their lead and the reply it would
send) and marks it done with sluice_answer_turn(). While it holds a turn,
whatever that person types gathers in the conversation's next open turn,
which it claims as one when it is done. Between turns it waits on the
connection, woken at once by the worker's NOTIFY.

Usage: deploy/samples/agent.py [--dsn DSN] [--name NAME] [--turns N]
                               [--timeout S] [--hold-ms MS]
  --dsn DSN      PostgreSQL, as the sluice_agent role (default:
                 $SLUICE_PG_AGENT_DSN, else $SLUICE_POSTGRES_DSN; `. .run/env`)
  --name NAME    recorded in chat_turns.claimed_by (default: sample-agent)
  --turns N      exit after answering N turns (default 0: no limit)
  --timeout S    exit after S seconds in all (default 0: no limit)
  --hold-ms MS   how long "writing the answer" takes (default 0)
Exit status: 0, or 2 when --timeout ends it before --turns turns.
Needs psycopg 3 (the project's venv: .venv/bin/python).
"""
import argparse
import os
import sys
import time

import psycopg
from psycopg.rows import dict_row


def lead_name(turn):
    ctx = turn.get("lead_context") or {}
    lead = ctx.get("lead") if isinstance(ctx, dict) else None
    return (lead or {}).get("name")


def messages_of(conn, ids):
    rows = conn.execute("SELECT provider_message_id, type, text FROM chat_messages"
                        " WHERE provider_message_id = ANY(%s)", (ids,)).fetchall()
    by_id = {r["provider_message_id"]: r for r in rows}
    return [by_id.get(i) for i in ids]


def answer(conn, turn, hold_ms):
    """What a real agent would do with the turn: here, print it."""
    name = lead_name(turn)
    who = turn["sender"] + (f" (lead {turn['lead_id']}, {name})" if turn["lead_id"] else
                            " (no lead with this phone)")
    ids = list(turn["message_ids"])
    print(f"turn {turn['id']} from {who}: {len(ids)} message{'s' * (len(ids) != 1)}", flush=True)
    for mid, m in zip(ids, messages_of(conn, ids)):
        body = (m["text"] if m and m["text"] is not None else f"<{m['type'] if m else '?'}>")
        print(f"    {mid}: {body}", flush=True)
    if hold_ms:
        time.sleep(hold_ms / 1000.0)
    print(f"  -> would reply: \"Thanks{', ' + name if name else ''}! We got your "
          f"{len(ids)} message{'s' * (len(ids) != 1)}.\"", flush=True)
    done = conn.execute("SELECT sluice_answer_turn(%s) AS done", (turn["id"],)).fetchone()["done"]
    print(f"  turn {turn['id']} {'answered' if done else 'was no longer claimed'}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", default=os.environ.get("SLUICE_PG_AGENT_DSN")
                    or os.environ.get("SLUICE_POSTGRES_DSN"))
    ap.add_argument("--name", default="sample-agent")
    ap.add_argument("--turns", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=0)
    ap.add_argument("--hold-ms", type=int, default=0)
    a = ap.parse_args()
    if not a.dsn:
        sys.exit("agent.py: no --dsn and no SLUICE_POSTGRES_DSN (source .run/env)")

    deadline = time.monotonic() + a.timeout if a.timeout > 0 else None
    answered = 0
    with psycopg.connect(a.dsn, autocommit=True, row_factory=dict_row) as conn:
        # LISTEN first, then claim: a turn that opens in between is either
        # claimed now or its NOTIFY is waiting on the socket.
        conn.execute("LISTEN sluice_turns")
        print(f"agent {a.name}: listening on sluice_turns", flush=True)
        while not a.turns or answered < a.turns:
            turn = conn.execute("SELECT * FROM sluice_claim_turn(%s)", (a.name,)).fetchone()
            if turn is not None:
                answer(conn, turn, a.hold_ms)
                answered += 1
                continue
            wait = 30.0
            if deadline is not None:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
            # Woken by the first NOTIFY (or one psycopg already read during
            # an earlier query: notifies() returns those first, which a bare
            # select() on the socket would miss); then claim again.
            for _ in conn.notifies(timeout=min(wait, 30.0), stop_after=1):
                pass
            for _ in conn.notifies(timeout=0):   # the rest: one claim covers them all
                pass
    print(f"agent {a.name}: {answered} turn{'s' * (answered != 1)} answered", flush=True)
    if a.turns and answered < a.turns:
        print(f"agent {a.name}: timed out after {a.timeout:g} s ({answered} of {a.turns} turns)",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
