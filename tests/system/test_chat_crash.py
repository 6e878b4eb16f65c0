# kill -9 of the worker while people keep writing (docs/chat.md): messages,
# turns and offsets commit together, so after restarts every message is
# stored once and sits in exactly one turn, each person's turns hold their
# messages in the order they were sent, and a turn once claimed never
# changes.

import random
import threading
import time
from collections import Counter, deque

from chat_util import (CHAT_SOURCE, Agent, business_number, chat_ingest,
                       message_count, raw, text_message, turns, wa_id, wamid,
                       webhook)
from harness import Client

SENDERS = 50
PER_SENDER = 40                 # 2,000 messages
THREADS = 10                    # each owns SENDERS / THREADS people
PACE_S = 0.1                    # pause between one thread's webhooks
KILLS_AT = (300, 800, 1300)     # stored messages at which to kill -9
# Each thread sends its last quarter of messages only after the last kill: a
# restarted worker drains its backlog fast, and without this hold the last
# kill could land after everything had been stored.
HELD_SHARE = 0.25
TWO_SENDERS = 0.3               # share of webhooks carrying two people


def _plan(rnd, biz, senders, ts0):
    """The webhooks of one thread (raw bodies with their number of people
    and of messages, in sending order) and, per sender, the message ids in
    the order sent."""
    queues = {}
    order = {}
    for s in senders:
        ms = [text_message(wamid(), s, f"{s} says {k}", ts0 + k)
              for k in range(PER_SENDER)]
        queues[s] = deque(ms)
        order[s] = [m["id"] for m in ms]
    bodies = []
    while any(queues.values()):
        live = [s for s in senders if queues[s]]
        s1 = rnd.choice(live)
        part1 = [queues[s1].popleft()
                 for _ in range(min(rnd.randint(1, 3), len(queues[s1])))]
        part2 = []
        others = [s for s in live if s != s1 and queues[s]]
        if others and rnd.random() < TWO_SENDERS:
            s2 = rnd.choice(others)
            part2 = [queues[s2].popleft()
                     for _ in range(min(rnd.randint(1, 2), len(queues[s2])))]
        # Interleave the two people, each one's messages kept in order.
        merged = []
        i = j = 0
        while i < len(part1) or j < len(part2):
            if j >= len(part2) or (i < len(part1) and rnd.random() < 0.5):
                merged.append(part1[i])
                i += 1
            else:
                merged.append(part2[j])
                j += 1
        bodies.append((raw(webhook(biz, merged)),
                       len({m["from"] for m in merged}), len(merged)))
    return bodies, order


def test_kill_9_mid_stream(pipeline, services):
    rnd = random.Random(0xC4A7)
    biz = business_number()
    senders = [wa_id() for _ in range(SENDERS)]
    total = SENDERS * PER_SENDER
    ts0 = int(time.time()) - 3600
    per_thread = SENDERS // THREADS
    plans = []
    order = {}
    for t in range(THREADS):
        bodies, o = _plan(rnd, biz, senders[t * per_thread:
                                            (t + 1) * per_thread], ts0)
        plans.append(bodies)
        order.update(o)
    assert sum(len(v) for v in order.values()) == total
    assert any(n == 2 for p in plans for _, n, _m in p)
    want_records = sum(n for p in plans for _, n, _m in p)
    held_from = []                  # per thread: the first body held back
    for p in plans:
        mine, upto = sum(m for _, _n, m in p), 0
        for i, (_, _n, m) in enumerate(p):
            if upto >= (1 - HELD_SHARE) * mine:
                break
            upto += m
        held_from.append(i)
    unheld = sum(m for p, h in zip(plans, held_from) for _, _n, m in p[:h])
    assert KILLS_AT[-1] < unheld < total, (unheld, KILLS_AT)

    # A killed worker may hold a lead-lookup lease: keep its wait short.
    crash_tuning = {"lead_context__lease_ms": 1000,
                    "lead_context__lease_wait_ms": 1500,
                    "kafka__group.instance.id": f"{pipeline.group}-w",
                    "kafka__session.timeout.ms": 6000,
                    "kafka__heartbeat.interval.ms": 1000}
    worker = pipeline.start_worker(batch_max=10, redis_timeout_ms=300,
                                   **crash_tuning)
    ingest = chat_ingest(pipeline)

    # -- An agent claims and answers this test's turns all along, so people
    #    get several turns; what it saw at each claim is kept.
    stop = threading.Event()
    claimed = {}                    # turn id -> message_ids when claimed
    agent_errors = []

    arnd = random.Random(7)

    def agent_loop():
        try:
            with Agent(services, biz, name="crash-agent") as agent:
                while not stop.is_set():
                    c = agent.claim()
                    if c is None:
                        time.sleep(0.02)
                        continue
                    claimed[c["id"]] = list(c["message_ids"])
                    time.sleep(arnd.uniform(0, 0.05))
                    assert agent.answer(c["id"]) is True, c
        except BaseException as exc:  # noqa: BLE001 - reported below
            agent_errors.append(exc)
    agent = threading.Thread(target=agent_loop, daemon=True)

    # -- The senders.
    send_errors = []
    statuses = Counter()
    killed = threading.Event()

    def send(t):
        client = Client(ingest.port, timeout=30)
        try:
            for i, (body, _n, _m) in enumerate(plans[t]):
                if i == held_from[t]:
                    assert killed.wait(120), "the kills never finished"
                for attempt in range(20):
                    r = client.post(body, retries=3, source=CHAT_SOURCE)
                    statuses[r.status] += 1
                    if r.status == 503:     # the gateway retries
                        time.sleep(0.2)
                        continue
                    assert r.status == 202, r
                    break
                else:
                    raise AssertionError(f"20 x 503 on one webhook: {r}")
                time.sleep(PACE_S)
        except BaseException as exc:  # noqa: BLE001 - reported below
            send_errors.append(exc)
        finally:
            client.close()
    threads = [threading.Thread(target=send, args=(t,), daemon=True)
               for t in range(THREADS)]
    t0 = time.monotonic()
    agent.start()
    for th in threads:
        th.start()

    kills = []
    for k, at in enumerate(KILLS_AT):
        deadline = time.monotonic() + 40
        while message_count(services, biz) < at:
            worker.assert_alive()
            assert not send_errors, send_errors
            assert time.monotonic() < deadline, (
                f"stalled at {message_count(services, biz)} messages before "
                f"kill {k + 1}; log tail:\n{worker.log_tail(20)}")
            time.sleep(0.02)
        time.sleep(rnd.uniform(0, 0.3))
        worker.kill9()
        kills.append((round(time.monotonic() - t0, 2),
                      message_count(services, biz)))
        pipeline.restart(worker)
    killed.set()

    for th in threads:
        th.join(90)
    assert not any(th.is_alive() for th in threads), "senders hung"
    assert not send_errors, send_errors
    sent_at = round(time.monotonic() - t0, 2)
    assert kills[-1][1] < total, f"the last kill came after the end: {kills}"
    pipeline.wait_caught_up(timeout=60)
    # Let the agent take what is left, then stop it.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and services.scalar(
            "SELECT count(*) FROM chat_turns WHERE business_number = %s"
            " AND status = 'open'", (biz,)):
        time.sleep(0.1)
    stop.set()
    agent.join(30)
    assert not agent_errors, agent_errors
    print(f"kills (s, messages): {kills}; sent by {sent_at} s; "
          f"answers {dict(statuses)}; {len(claimed)} turns claimed")

    # -- Every message once.
    assert services.topic_count(pipeline.topic) >= want_records
    rows = services.query(
        "SELECT provider_message_id, sender FROM chat_messages"
        " WHERE business_number = %s", (biz,))
    stored = Counter(m for m, _ in rows)
    all_ids = {m for ids in order.values() for m in ids}
    assert set(stored) == all_ids, (
        f"missing {sorted(all_ids - set(stored))[:5]}, "
        f"extra {sorted(set(stored) - all_ids)[:5]}")
    assert all(n == 1 for n in stored.values())
    owner = {m: s for s, ids in order.items() for m in ids}
    wrong = [(m, s) for m, s in rows if owner[m] != s]
    assert not wrong, f"messages stored under another sender: {wrong[:5]}"

    # -- Every message in exactly one turn, each person's in order.
    ts = turns(services, biz)
    in_turns = Counter(m for t in ts for m in t["message_ids"])
    dup = {m: n for m, n in in_turns.items() if n > 1}
    assert not dup, (f"{len(dup)} messages in more than one turn place, "
                     f"e.g. {sorted(dup.items())[:5]}; kills {kills}")
    assert set(in_turns) == all_ids, (
        f"{len(all_ids - set(in_turns))} messages in no turn, e.g. "
        f"{sorted(all_ids - set(in_turns))[:5]}; "
        f"extra {sorted(set(in_turns) - all_ids)[:5]}")
    bad_order = {}
    for s, ids in order.items():
        mine = [t for t in ts if t["sender"] == s]   # by id already
        got = [m for t in mine for m in t["message_ids"]]
        if got != ids:
            first = next(i for i, (a, b) in enumerate(zip(got + [None] *
                                                          len(ids), ids))
                         if a != b)
            bad_order[s] = (first, got[first:first + 3],
                            ids[first:first + 3])
        assert sum(t["status"] == "open" for t in mine) <= 1
    assert not bad_order, (
        f"{len(bad_order)} people's turns out of order (index, got, want): "
        f"{sorted(bad_order.items())[:3]}")
    foreign = [t["id"] for t in ts if t["sender"] not in order]
    assert not foreign, foreign

    # -- A claimed turn never changed afterwards.
    by_id = {t["id"]: t for t in ts}
    changed = {i: (ids, by_id[i]["message_ids"]) for i, ids in claimed.items()
               if by_id[i]["message_ids"] != ids}
    assert not changed, (f"{len(changed)} turns got messages after they "
                         f"were claimed: {sorted(changed.items())[:3]}")
    assert len(claimed) > SENDERS, (
        f"only {len(claimed)} turns claimed: the agent hardly ran")
