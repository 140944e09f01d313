"""What waiting for durability costs (a part of `make bench`).

One Redis Cluster of 3 masters, each with a replica, every node keeping an AOF (`appendfsync
everysec`): two services on it, one as shipped (`WAIT` for the connected replica and
`WAITAOF` for the local fsync at the end of every round trip of writes) and one with
`DURABLE_WAIT_SECONDS=0` (writes count once the master ran them), voted at in turns by wrk:
ad-hoc votes (`bench/vote.lua`, flushed every 0.5 s) and defined-poll votes
(`bench/defined_vote.lua`, each answered only once its round trip is durable). Reported:
each rate, and the ratio waiting / not waiting per round (median and range over rounds), and
the median ms per flush from each service's flush lines. `python -m bench.durability` runs
this part alone.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

from app.devtools.local_cluster import LocalCluster
from app.devtools.uvicorn_process import UvicornProcess
from bench import defined
from bench.alone import TOKEN, Log, log
from bench.cluster import flush_costs
from bench.wrk import run_wrk

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
SERVICES = {"waits": "1", "no wait": "0"}  # name -> DURABLE_WAIT_SECONDS


def measure(log: Log) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-durability-") as folder:
        cluster = LocalCluster(masters=3, replicas=1, data_dir=Path(folder))
        processes: list[UvicornProcess] = []
        try:
            cluster.start()
            log("durability bench: 3 masters + 3 replicas, AOF everysec on every node")
            urls = {}
            for name, wait in SERVICES.items():
                env = {
                    "REDIS_CLUSTER_URL": cluster.url,
                    "BATCH_INTERVAL_SECONDS": "0.5",
                    "DURABLE_WAIT_SECONDS": wait,
                    "API_TOKEN": TOKEN,
                }
                processes.append(UvicornProcess(env=env, quiet=True))
                urls[name] = processes[-1].wait_ready().url
                defined.create_poll(urls[name], TOKEN, f"durable{wait}")
            rates: dict[str, dict[str, list[float]]] = {
                kind: {name: [] for name in SERVICES} for kind in ("vote", "defined")
            }
            for i in range(1, ROUNDS + 1):
                for name, wait in SERVICES.items():
                    vote = run_wrk(urls[name], "vote.lua", SECONDS)
                    env = {**os.environ, "BENCH_POLL": f"durable{wait}", "BENCH_ROUND": str(i)}
                    vote_defined = run_wrk(urls[name], "defined_vote.lua", SECONDS, env=env)
                    rates["vote"][name].append(vote.rps)
                    rates["defined"][name].append(vote_defined.rps)
                    log(
                        f"durability round {i}/{ROUNDS} {name}: votes {vote.rps:,.0f} req/s, "
                        f"defined votes {vote_defined.rps:,.0f} req/s"
                    )
            outputs = dict(zip(SERVICES, (p.terminate() for p in processes), strict=True))
        finally:
            for process in processes:
                process.kill()
            cluster.stop()
    report: dict[str, Any] = {}
    for kind, by_name in rates.items():
        ratios = [w / n for w, n in zip(by_name["waits"], by_name["no wait"], strict=True)]
        report[kind] = {
            **{name: statistics.median(r) for name, r in by_name.items()},
            "ratio": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
        }
    report["ms_per_flush"] = {
        name: flush_costs(output)["ms_per_flush"] for name, output in outputs.items()
    }
    return report


def markdown(r: dict[str, Any]) -> list[str]:
    lines = [
        "Durability wait: a cluster of 3 masters + 3 replicas, AOF everysec; the service as "
        "shipped (WAIT + WAITAOF per round trip) against `DURABLE_WAIT_SECONDS=0`, in turns.",
        "",
        "| rate | waits req/s | no wait req/s | waits / no wait (median, range over rounds) |",
        "|---|---:|---:|---|",
    ]
    for kind, label in (("vote", "POST vote (ad-hoc)"), ("defined", "POST defined vote")):
        f = r[kind]
        low, high = f["ratio_range"]
        lines.append(
            f"| {label} | {f['waits']:,.0f} | {f['no wait']:,.0f} "
            f"| **{f['ratio']:.2f}x** ({low:.2f}-{high:.2f}) |"
        )
    ms = r["ms_per_flush"]
    lines += ["", f"Median ms per flush: waits {ms['waits']:.1f}, no wait {ms['no wait']:.1f}."]
    return lines


def main() -> None:
    print("\n".join(markdown(measure(log))))


if __name__ == "__main__":
    main()
