#!/usr/bin/env python3
"""make bench's one table: every figure next to its baseline from the same
run, the ratio and the goal, gathered from bench/out/{bench,contexts,chat,invalidate}.json;
written as bench/out/summary.json and, when matplotlib is there, as the chart
bench/out/summary.png (ratio to goal per figure)."""
import json
import os

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


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
    inv = load("invalidate.json")
    if inv:
        out.append({"figure": f"invalidate {inv['conversations']} conversations",
                    "value": inv["sluice_cache_ms"], "unit": "ms",
                    "baseline": f"SCAN per pattern, {inv['keyspace'] // 1000}k keys",
                    "baseline_value": inv["baseline_cache_ms"],
                    "ratio": round(inv["baseline_cache_ms"] / max(inv["sluice_cache_ms"], 1), 1),
                    "goal": "(baseline/sluice)"})
    return out


def main():
    table = rows()
    print(f"{'figure':36} {'value':>10} {'unit':6} {'baseline':26} {'baseline':>10} "
          f"{'ratio':>8}  goal")
    for r in table:
        bv = "" if r["baseline_value"] is None else f"{r['baseline_value']:.0f}"
        ra = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{r['figure'][:36]:36} {r['value']:10.1f} {r['unit']:6} "
              f"{(r['baseline'] or '')[:26]:26} {bv:>10} {ra:>8}  {r['goal'] or ''}")
    with open(os.path.join(OUT, "summary.json"), "w") as f:
        json.dump(table, f, indent=1)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("summary: matplotlib missing, no chart (pip install matplotlib)")
        return
    with_ratio = [r for r in table if r["ratio"] is not None]
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(with_ratio) + 1.5))
    labels = [f"{r['figure']} vs {r['baseline']}" for r in with_ratio]
    ax.barh(labels, [r["ratio"] for r in with_ratio])
    ax.set_xscale("log")
    ax.set_xlabel("ratio (see the goal column of the table)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(os.path.join(OUT, "summary.png"), dpi=100)
    print("summary: wrote bench/out/summary.json and bench/out/summary.png")


if __name__ == "__main__":
    main()
