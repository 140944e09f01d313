"""Pushpin and the results cache (docs/pushpin-and-cache.md), in `python -m bench.pushpin`.

1. Fan-out through Debian's Pushpin: one service worker behind a Pushpin started from
   deploy/pushpin/, subscribers held by bench/fanout.py's client process through Pushpin,
   in steps up to `BENCH_PUSHPIN_SUBSCRIBERS` (10,000). At each step: single votes at
   `BENCH_VOTE_RATE`/s (through Pushpin, as a crowd's would go); the delay from each 200 to
   the event that shows it (p50/p99); the service's CPU per event published; Pushpin's CPU per
   event delivered and its RSS per subscriber (all its processes: condure, proxy, handler,
   zurl).
2. Results: `GET /polls/{id}/results` (defined) and `GET /results/{id}` (ad-hoc) by wrk on the
   service with `RESULTS_MAX_AGE_SECONDS=0` (a node read per request, as before) and =1 (the
   last state read); then both through deploy/nginx.cache.conf at `BENCH_CACHE_CONNECTIONS`
   (10,000) connections: nginx's req/s and the requests that reached the service.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.devtools.local_nodes import LocalNode, free_port
from app.devtools.local_pushpin import LocalPushpin
from app.devtools.uvicorn_process import UvicornProcess
from bench import defined
from bench.alone import Log, log, on_two_nodes
from bench.fanout import cpu_seconds, rss_kib, wait_idle
from bench.fanout_client import ClientProcess, raise_open_files
from bench.wrk import run_wrk

POLL = "bench-pushpin"
RESULTS_POLL = "bench-cached-results"
GRIP_KEY = "bench-grip-key-of-at-least-32-bytes-long"
TOP = int(os.environ.get("BENCH_PUSHPIN_SUBSCRIBERS", "10000"))
VOTES = int(os.environ.get("BENCH_LATENCY_VOTES", "100"))
VOTE_RATE = float(os.environ.get("BENCH_VOTE_RATE", "10"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CACHE_CONNECTIONS = int(os.environ.get("BENCH_CACHE_CONNECTIONS", "10000"))
BATCH = 100  # new streams opened at a time
ROOT = Path(__file__).resolve().parents[1]


def group_pids(leader: int) -> list[int]:
    """The leader and every process below it (Pushpin's runner: condure, proxy, handler,
    zurl)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found = [leader]
    for pid in found:
        found += [child for child, parent in parents.items() if parent == pid]
    return found


def group_cpu(leader: int) -> float:
    return sum(cpu_seconds(pid) for pid in group_pids(leader))


def group_rss_kib(leader: int) -> int:
    return sum(rss_kib(pid) for pid in group_pids(leader))


def fan_out(nodes: list[LocalNode], token: str, folder: Path) -> list[dict[str, Any]]:
    """Subscribers through Pushpin in steps; votes, delays, CPU and memory at each."""
    raise_open_files()
    pushpin = LocalPushpin(folder / "pushpin", GRIP_KEY)
    env = {
        "REDIS_NODES": ",".join(f"redis_{n.port}={n.url}" for n in nodes),
        "API_TOKEN": token,
        "STREAM_INTERVAL_SECONDS": "0.5",
        "PUSHPIN_GRIP_KEY": GRIP_KEY,
        "PUSHPIN_PUBLISH_URLS": pushpin.publish_url,
    }
    service = UvicornProcess("app.main:create_app", env, quiet=True).wait_ready()
    pushpin.start([f"127.0.0.1:{service.port}"])
    assert pushpin.process is not None
    leader = pushpin.process.pid
    steps: list[dict[str, Any]] = []
    client: ClientProcess | None = None
    try:
        defined.create_poll(service.url, token, POLL)
        client = ClientProcess(pushpin.url, POLL, log)
        rss_base = group_rss_kib(leader)
        for n in [s for s in (1000,) if s < TOP] + [TOP]:
            # In batches of 100: Debian's Pushpin 1.36 answers part of a burst of 250 new
            # streams at once with 502 (its proxy gets "unavailable" from zurl).
            for total in [*range(BATCH, n, BATCH), n]:
                opened = client.call("open", total=total)
                if opened["error"]:
                    break
            held = int(opened["held"])
            if opened["error"]:
                log(f"pushpin: stopped at {held:,} subscribers: {opened['error']}")
            wait_idle(service.process.pid)
            rss = group_rss_kib(leader)
            app_cpu, pp_cpu = cpu_seconds(service.process.pid), group_cpu(leader)
            events = client.call("count")["events"]
            latency = client.call("latency", votes=VOTES, rate=VOTE_RATE, tag=f"pp{held}")
            app_cpu = cpu_seconds(service.process.pid) - app_cpu
            pp_cpu = group_cpu(leader) - pp_cpu
            delivered = client.call("count")["events"] - events
            published = delivered / max(held, 1)  # each subscriber gets each state once
            step = {
                "subscribers": held,
                "pushpin_rss_mib": rss / 1024,
                "pushpin_kib_per_subscriber": (rss - rss_base) / max(held, 1),
                "events_published": published,
                "events_delivered": delivered,
                "app_cpu_ms_per_event": app_cpu / max(published, 1) * 1000,
                "pushpin_cpu_us_per_delivered": pp_cpu / max(delivered, 1) * 1e6,
                "p50_ms": latency["p50_ms"],
                "p99_ms": latency["p99_ms"],
                "missing": latency["missing"],
                "votes": latency["votes"],
            }
            log(f"pushpin: {json.dumps(step)}")
            steps.append(step)
            if held < n:
                break
    finally:
        if client is not None:
            client.stop()
        pushpin.stop()
        service.kill()
    return steps


def nginx_config(folder: Path, listen: int, upstream: int) -> Path:
    """The shipped config on our ports; between it and the service a plain nginx hop logs
    each request that reaches the service (origin.log)."""
    hop = free_port()
    text = (ROOT / "deploy" / "nginx.cache.conf").read_text()
    text = text.replace("listen 8000;", f"listen 127.0.0.1:{listen} backlog=16384;")
    text = text.replace("server app:8000;", f"server 127.0.0.1:{hop};")

    text = text.replace("/var/cache/nginx/results", f"{folder}/cache")
    text = text.replace("worker_connections 4096;", "worker_connections 30000;")
    temp = "".join(f"    {k}_temp_path {folder}/{k};\n" for k in ["client_body", "proxy"])
    origin = (
        f"    log_format origin '$request_uri';\n"
        f"    server {{\n        listen 127.0.0.1:{hop};\n"
        f"        access_log {folder}/origin.log origin;\n"
        f"        location / {{ proxy_pass http://127.0.0.1:{upstream}; }}\n    }}\n"
    )
    text = text.replace("http {\n", "http {\n" + temp + origin, 1)
    path = folder / "nginx.conf"
    path.write_text(text)
    return path


def results(nodes: list[LocalNode], token: str, folder: Path) -> dict[str, Any]:
    raise_open_files()
    found: dict[str, Any] = {}
    base = {"REDIS_NODES": ",".join(f"redis_{n.port}={n.url}" for n in nodes), "API_TOKEN": token}
    scripts = {"defined": "defined_results.lua", "adhoc": "results.lua"}
    for max_age in ("0", "1"):
        env = {**base, "RESULTS_MAX_AGE_SECONDS": max_age}
        service = UvicornProcess("app.main:create_app", env, quiet=True).wait_ready()
        try:
            if max_age == "0":
                defined.create_poll(service.url, token, RESULTS_POLL)
            for name, script in scripts.items():
                wrk_env = {**os.environ, "BENCH_POLL": RESULTS_POLL}
                result = run_wrk(service.url, script, SECONDS, env=wrk_env)
                found[f"service {name} max-age={max_age}"] = result.as_dict()
                log(f"results: service, {name}, max-age {max_age}: {result.rps:,.0f} req/s")
            if max_age == "1":
                found.update(through_nginx(service, folder, scripts))
        finally:
            service.kill()
    return found


def through_nginx(service: UvicornProcess, folder: Path, scripts: dict[str, str]) -> dict[str, Any]:
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if nginx is None:
        return {"nginx": "not installed"}
    listen = free_port()
    config = nginx_config(folder, listen, service.port)
    main = f"pid {folder}/nginx.pid; daemon off; master_process off;"
    command = [nginx, "-c", str(config), "-p", str(folder), "-e", "stderr", "-g", main]
    found: dict[str, Any] = {}
    # nginx.cache.conf sets worker_processes auto; the -g one would clash: drop it here.
    config.write_text(config.read_text().replace("worker_processes auto;\n", ""))
    process = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + 20
        while not answers(f"http://127.0.0.1:{listen}/") and time.monotonic() < deadline:
            time.sleep(0.05)
        for name, script in scripts.items():
            before = origin_requests(folder)
            wrk_env = {**os.environ, "BENCH_POLL": RESULTS_POLL}
            url = f"http://127.0.0.1:{listen}"
            result = run_wrk(url, script, SECONDS, connections=CACHE_CONNECTIONS, env=wrk_env)
            reached = origin_requests(folder) - before
            found[f"nginx {name} {CACHE_CONNECTIONS} connections"] = {
                **result.as_dict(),
                "origin_requests": reached,
                "origin_rps": reached / SECONDS,
            }
            log(
                f"results: nginx, {name}, {CACHE_CONNECTIONS:,} connections: "
                f"{result.rps:,.0f} req/s, {reached / SECONDS:.1f} req/s reached the service "
                f"({result.socket_errors} socket errors, {result.non_2xx} not 2xx)"
            )
    finally:
        process.terminate()
        process.wait(10)
    return found


def answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1)
        return True
    except httpx.HTTPError:
        return False


def origin_requests(folder: Path) -> int:
    log_file = folder / "origin.log"
    return len(log_file.read_text().splitlines()) if log_file.exists() else 0


def measure(nodes: list[LocalNode], token: str, _log: Log) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        if os.environ.get("BENCH_KEEP"):
            folder = tempfile.mkdtemp()
            log(f"pushpin: files kept in {folder}")
        return {
            "fan_out": fan_out(nodes, token, Path(folder)),
            "results": results(nodes, token, Path(folder)),
        }


def main() -> None:
    print(json.dumps(on_two_nodes(measure), indent=2))


if __name__ == "__main__":
    main()
