"""`make bench`'s report (bench/run.py): the results as markdown tables and a chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import cluster, durability, fanout, instances, migrate, question_types


def markdown(r: dict[str, Any]) -> str:
    v, g, ratios = r["post_vote"], r["get_results"], r["ratios"]
    rows = [
        "| measure | service | naive | bare | service / naive | service / bare |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, data, key_n, key_b in [
        ("POST vote, req/s", v, "vote_vs_naive", "vote_vs_bare"),
        ("GET results (cache hit), req/s", g, "results_vs_naive", None),
    ]:
        bare_ratio = f"{data['service']['rps'] / data['bare']['rps']:.2f}x"
        rows.append(
            f"| {label} | {data['service']['rps']:,.0f} | {data['naive']['rps']:,.0f} "
            f"| {data['bare']['rps']:,.0f} | **{ratios[key_n]:.2f}x** | "
            + (f"**{ratios[key_b]:.2f}x** |" if key_b else f"{bare_ratio} |")
        )
        for q in ["p50_ms", "p99_ms"]:
            rows.append(
                f"| {label.split(',')[0]}, {q[:3]} latency ms | {data['service'][q]:.2f} "
                f"| {data['naive'][q]:.2f} | {data['bare'][q]:.2f} | | |"
            )
    b = r["bulk"]
    non_2xx = v["service"]["non_2xx"] + g["service"]["non_2xx"] + b["non_2xx"]
    non_2xx += r.get("defined", {}).get("non_2xx", 0)
    lines = [
        f"Medians of {r['settings']['rounds']} rounds of {r['settings']['seconds']:g} s, "
        "wrk 1 thread 50 connections, one uvicorn worker each (uvloop, httptools), "
        f"{r['machine']['cpus']} cores.",
        "",
        *rows,
        "",
        "| other measure | value |",
        "|---|---:|",
        f"| bulk `POST /votes` (1,000 entries, {b['votes_per_request']:,.0f} votes a request), "
        f"votes/s | {b['votes_per_s']:,.0f} "
        f"(**{ratios['bulk_votes_vs_single']:.0f}x** single votes; p99 {b['p99_ms']:.1f} ms) |",
        f"| bulk entries/s | {b['entries_per_s']:,.0f} "
        f"({ratios['bulk_entries_vs_single']:.0f}x single-vote requests) |",
        f"| POST vote req/s, 1 worker / 2 workers | "
        f"{r['workers']['1']:,.0f} / {r['workers']['2']:,.0f} |",
        f"| hash ring `get_node`, repeated poll ids, calls/s | {r['ring_get_node_per_s']:,.0f} |",
        f"| Redis round trips per flush (2 nodes) | {r['round_trips_per_flush']:.2f} |",
        f"| counts check: votes accepted = votes in Redis after the final flush | "
        f"{r['counts']['accepted']:,} = {r['counts']['counted']:,}: "
        f"**{'exact' if r['counts']['exact'] else 'MISMATCH'}** |",
        f"| non-2xx answers to the service | {non_2xx} |",
    ]
    if "defined" in r:
        lines += ["", *defined_rows(r["defined"], v["service"])]
    journal = r.get("journal", {})
    if journal:
        lines += [
            "",
            "| POST vote with the journal (`JOURNAL_FSYNC`) | req/s | p99 ms | vs no journal |",
            "|---|---:|---:|---:|",
        ]
        for name, data in journal.items():
            figures = f"{data['rps']:,.0f} | {data['p99_ms']:.2f} | {data['vs_no_journal']:.2f}x"
            lines.append(f"| {name} | {figures} |")
    if "fanout" in r:
        lines += ["", *fanout.markdown(r["fanout"])]
    if "instances" in r:
        lines += ["", *instances.markdown(r["instances"])]
    if "question_types" in r:
        lines += ["", *question_types.markdown(r["question_types"])]
    if "cluster" in r:
        lines += ["", *cluster.markdown(r["cluster"])]
    if "durability" in r:
        lines += ["", *durability.markdown(r["durability"])]
    if "migrate" in r:
        lines += ["", *migrate.markdown(r["migrate"])]
    return "\n".join(lines) + "\n"


def defined_rows(d: dict[str, Any], ad_hoc: dict[str, float]) -> list[str]:
    m = d["memory"]
    return [
        "| defined poll, one vote per voter, distinct voters | value |",
        "|---|---:|",
        f"| `POST /polls/{{id}}/vote`, req/s (same rounds as ad-hoc `POST vote`) "
        f"| {d['rps']:,.0f} (**{d['vs_ad_hoc']:.2f}x** ad-hoc {ad_hoc['rps']:,.0f}) |",
        f"| p50 / p99 latency ms (ad-hoc) | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} "
        f"({ad_hoc['p50_ms']:.2f} / {ad_hoc['p99_ms']:.2f}) |",
        f"| non-2xx answers | {d['non_2xx']} |",
        f"| node round trips per accepted vote (50 connections) | "
        f"**{d['round_trips_per_vote']:.3f}** ({d['round_trips']:,} for {d['total_votes']:,}; "
        f"{d['votes_per_round_trip']:.1f} votes a round trip) |",
        f"| `total_votes` = 2xx answers wrk read + requests in flight at wrk's stops (at most "
        f"50 a round) | {d['total_votes']:,} = {d['wrk_2xx']:,} + {d['unread_at_stop']}: "
        f"**{d['total_check']}** |",
        f"| node memory per voter ({m['voters']:,} voters in one poll) "
        f"| **{m['memory_usage_per_voter']:.1f} bytes** (`MEMORY USAGE`; `used_memory` "
        f"{m['used_memory_per_voter']:.1f}) |",
    ]


def chart(r: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    apps = ["service", "naive", "bare"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for offset, (name, data) in enumerate(
        [("POST vote", r["post_vote"]), ("GET results", r["get_results"])]
    ):
        xs = [i + offset * 0.4 for i in range(3)]
        axes[0].bar(xs, [data[a]["rps"] for a in apps], width=0.4, label=name)
        axes[1].bar(xs, [data[a]["p99_ms"] for a in apps], width=0.4, label=name)
    for ax, title in zip(axes, ["throughput (req/s)", "p99 latency (ms)"], strict=True):
        ax.set_xticks([i + 0.2 for i in range(3)], apps)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
