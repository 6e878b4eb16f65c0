#!/usr/bin/env python3
"""make bench's one table: every figure next to its baseline from the same
run, the ratio and the goal, gathered from bench/out/{bench,contexts,chat,invalidate,compose}.json;
written as bench/out/summary.json and, when matplotlib is there, as the chart
bench/out/summary.png: a bar per figure (its ratio to its baseline), the
goal marked on it and the bar coloured by met or short."""
import json
import os
import re

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


GOAL = re.compile(r"^\s*(<=|>=|<|>)\s*([0-9]+(?:\.[0-9]+)?)(?:x\b|\s*\(|\s*$)")
# A goal on the value itself: "< 30 ms", "<= 2 ms", "< 64 MB".
VALUE_GOAL = re.compile(r"^\s*(<=|>=|<|>)\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|MB|s|%)\s*$")


def value_goals(table):
    """For each figure whose goal is set on its value, a row that reads it
    as a ratio to the goal, so that it is judged and drawn like the
    others ("e2e p99 ... < 30 ms": 20.6 ms is 0.69 of the goal)."""
    out = []
    for r in table:
        m = VALUE_GOAL.match(r.get("goal") or "")
        if not m:
            continue
        op, bound, unit = m.group(1), float(m.group(2)), m.group(3)
        ok = {"<=": r["value"] <= bound, "<": r["value"] < bound,
              ">=": r["value"] >= bound, ">": r["value"] > bound}[op]
        out.append({"figure": r["figure"], "value": r["value"], "unit": r["unit"],
                    "baseline": "goal", "baseline_value": bound,
                    # a log axis has no place for 0 or less: such a value
                    # is judged, not drawn
                    "ratio": round(r["value"] / bound, 3) if r["value"] > 0 else None,
                    "goal": f"{op} 1.0 (value/{bound:g} {unit})",
                    "met": ok})
    return out


def goal_of(r):
    """(op, bound) of a ratio goal such as ">= 0.7" or "<= 1.15 (...)";
    None for a figure without one ("report", "ceiling", "(baseline/sluice)")
    or one set on the value rather than the ratio ("< 5 ms")."""
    m = GOAL.match(r.get("goal") or "")
    return (m.group(1), float(m.group(2))) if m else None


def verdict(r, g):
    if "met" in r:  # judged on its value (value_goals)
        return "met" if r["met"] else "short"
    if not g or r["ratio"] is None:
        return None
    op, bound = g
    ok = {"<=": r["ratio"] <= bound, "<": r["ratio"] < bound,
          ">=": r["ratio"] >= bound, ">": r["ratio"] > bound}[op]
    return "met" if ok else "short"


def label(r):
    """A figure's label, read once: the baseline is named unless the
    figure already names it ("ingest req/s vs Camel")."""
    fig, base = r["figure"], r["baseline"] or ""
    if not base or " vs " in fig or base.lower() in fig.lower():
        return fig
    return f"{fig} vs {base}"


def load(name):
    try:
        with open(os.path.join(OUT, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def rows():
    out = list((load("bench.json") or {}).get("rows", []))
    ctx = load("contexts.json")
    if ctx:
        for r in ctx["results"]:
            out.append({"figure": f"lead contexts K={r['k']}", "value": r["sluice_ms"],
                        "unit": "ms", "baseline": "ideal schedule",
                        "baseline_value": r["ideal_ms"], "ratio": r["ratio"],
                        "goal": "<= 1.15"})
            if r["k"] == 5:
                out.append({"figure": "lead contexts K=5", "value": r["sluice_ms"],
                            "unit": "ms", "baseline": "chunks of 5 (seed's fix)",
                            "baseline_value": r["chunked_ms"],
                            "ratio": r["speedup"], "goal": ">= 1.3 (baseline/sluice)"})
    chat = load("chat.json")
    if chat and chat.get("latency"):
        lat = chat["latency"]["latency_202_to_notify_ms"]
        for q in ("p50", "p99"):
            out.append({"figure": f"chat 202 -> NOTIFY {q}", "value": lat[q], "unit": "ms",
                        "baseline": "seed's fixed buffer",
                        "baseline_value": chat["seed_buffer_ms"],
                        "ratio": round(chat["seed_buffer_ms"] / lat[q], 1),
                        "goal": "(baseline/sluice)"})
        goal = chat.get("goal_p99_ms")
        if goal and lat["p99"] is not None:
            out.append({"figure": "chat 202 -> NOTIFY p99", "value": lat["p99"], "unit": "ms",
                        "baseline": "goal", "baseline_value": goal,
                        "ratio": round(lat["p99"] / goal, 3),
                        "goal": f"< 1.0 (p99/{goal:g} ms)"})
        floor = (chat["latency"].get("floor_in_run") or {}).get("statement_to_notify_ms") or {}
        if floor.get("p99"):
            out.append({"figure": "chat 202 -> NOTIFY p99", "value": lat["p99"], "unit": "ms",
                        "baseline": "PostgreSQL's NOTIFY beside it",
                        "baseline_value": floor["p99"],
                        "ratio": round(lat["p99"] / floor["p99"], 2),
                        "goal": "report (sluice/floor)"})
    # bench/invalidate.py writes its rows in this shape already: each mode
    # against its goal and SCAN, and each mode's flatness between sizes.
    out.extend((load("invalidate.json") or {}).get("rows", []))
    out.extend(compose_rows(load("compose.json")))
    return out


def compose_rows(comp):
    """bench/compose.py: sluice's model window next to the ideal schedule,
    the old system's chunks of 5 and lookups-then-compose; the 429 regime."""
    if not comp or not comp.get("sluice"):
        return []
    n = comp["messages"]
    out = []
    for r in comp["results"]:
        out.append({"figure": f"compose {n} K={r['k']}", "value": r["sluice_ms"],
                    "unit": "ms", "baseline": "ideal schedule",
                    "baseline_value": r["ideal_ms"], "ratio": r["ratio"],
                    "goal": "<= 1.1"})
        if "speedup_vs_chunked" in r:
            out.append({"figure": f"compose {n} K={r['k']}", "value": r["sluice_ms"],
                        "unit": "ms", "baseline": "chunks of 5 (old system)",
                        "baseline_value": comp["chunked"]["ms"],
                        "ratio": r["speedup_vs_chunked"], "goal": ">= 1.5 (baseline/sluice)"})
        out.append({"figure": f"compose {n} K={r['k']} from 1st lookup",
                    "value": r["lookup_to_last_answer_ms"], "unit": "ms",
                    "baseline": "lookups, then compose",
                    "baseline_value": r["two_stage_ms"], "ratio": r["two_stage_gain"],
                    "goal": "(baseline/sluice)"})
    for g in comp.get("rate_limited", []):
        tag = "Retry-After" if g["variant"] == "Retry-After" else "no Retry-After"
        out.append({"figure": f"compose 429 K={g['k']} {tag}", "value": g["calls_per_s"],
                    "unit": "call/s", "baseline": "provider limit",
                    "baseline_value": g["limit_per_s"], "ratio": g["rate_ratio"],
                    "goal": ">= 0.9"})
        share = g["share_429"] * 100.0
        out.append({"figure": f"compose 429 share, {tag}", "value": share,
                    "unit": "%", "baseline": "goal", "baseline_value": 5.0,
                    # a log axis has no 0: no bar when nothing was answered 429
                    "ratio": round(share / 5.0, 3) if share > 0 else None,
                    "goal": "<= 1.0 (share/5 %)"})
    return out


def spread(r):
    """ " (lo-hi)" for a figure measured several times (bench.py's worker
    figure: the median run's ratio, with ratio_min and ratio_max)."""
    if r.get("ratio_min") is None or r.get("ratio_max") is None:
        return ""
    return f" ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"


def main():
    table = rows()
    table += value_goals(table)
    print(f"{'figure':36} {'value':>10} {'unit':6} {'baseline':26} {'baseline':>10} "
          f"{'ratio':>8}  goal")
    for r in table:
        bv = "" if r["baseline_value"] is None else f"{r['baseline_value']:.0f}"
        ra = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        v = verdict(r, goal_of(r))
        print(f"{r['figure'][:36]:36} {r['value']:10.1f} {r['unit']:6} "
              f"{(r['baseline'] or '')[:26]:26} {bv:>10} {ra:>8}  {r['goal'] or ''}"
              f"{'  (' + v + ')' if v else ''}"
              f"{'  runs' + spread(r) if spread(r) else ''}")
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(table, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("summary: matplotlib missing, no chart (pip install matplotlib)")
        return
    with_ratio = [r for r in table if r["ratio"] is not None]
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(with_ratio) + 2))
    colours = {"met": "#2e8b57", "short": "#c0392b", None: "#8c8c8c"}
    judged = [goal_of(r) for r in with_ratio]
    ys = range(len(with_ratio))
    ax.barh(ys, [r["ratio"] for r in with_ratio],
            color=[colours[verdict(r, g)] for r, g in zip(with_ratio, judged)])
    for y, g in zip(ys, judged):
        if g:  # the goal, a black tick across its bar
            ax.plot([g[1], g[1]], [y - 0.42, y + 0.42], color="black", lw=2)
    for y, r in zip(ys, with_ratio):
        if spread(r):  # the runs' spread, a thin line across the bar's end
            ax.plot([r["ratio_min"], r["ratio_max"]], [y, y], color="black", lw=1)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([label(r) for r in with_ratio])
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(
        matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("ratio to the baseline (black tick: the goal; thin line: the "
                  "spread of repeated runs;\ngreen met, red short, grey no goal)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "summary.png"), dpi=100)
    print("summary: wrote bench/out/summary.json and bench/out/summary.png")


if __name__ == "__main__":
    main()
