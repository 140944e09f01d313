"""The shipped monitoring, run for real against a real service (uvicorn, two real valkey
nodes, a journal): `promtool check metrics` on a scrape of /metrics, `promtool check
config` on deploy/prometheus.yml, and a real Prometheus running that config (only its
target, and its 5 s interval made 1 s, rewritten) that scrapes the service and answers
every query of the Grafana dashboard with data."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from app.devtools.local_nodes import LocalNode, free_port
from app.devtools.uvicorn_process import UvicornProcess
from tests.local_nginx import DEPLOY
from tests.real_binaries import require_binary

TOKEN = "monitoring-token"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
PROMETHEUS_CONFIG = DEPLOY / "prometheus.yml"
DEADLINE = 60.0  # for a condition polled until it holds; not a measure of speed


@dataclass
class Scraped:
    service: UvicornProcess
    text: str  # one scrape of /metrics after some traffic


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """A service on two nodes with a journal, after votes of every kind and a rejection."""
    nodes: list[LocalNode] = []
    service: UvicornProcess | None = None
    try:
        for _ in range(2):
            nodes.append(LocalNode(free_port(), appendfsync="always").start())
        env = {
            "REDIS_NODES": ",".join(node.url for node in nodes),
            "API_TOKEN": TOKEN,
            "BATCH_INTERVAL_SECONDS": "0.05",
            "JOURNAL_DIR": str(tmp_path_factory.mktemp("journal")),
        }
        service = UvicornProcess(env=env, quiet=True).wait_ready()
        with httpx.Client(base_url=service.url, timeout=DEADLINE) as client:
            make_traffic(client)
            yield Scraped(service, client.get("/metrics").text)
    finally:
        if service is not None:
            service.kill()
        for node in nodes:
            node.kill()


def make_traffic(client: httpx.Client) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/api/v1/vote/m1", json={"option_id": "A"}).is_success
    assert client.post("/api/v1/vote/m1", json={"option": "A"}).status_code == 422  # rejected
    options = [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}]
    created = client.post(
        "/api/v1/polls", json={"poll_id": "d1", "question": "Q?", "options": options}, headers=auth
    )
    assert created.status_code == 201, created.text
    voted = client.post(
        "/api/v1/polls/d1/vote", json={"option_id": "A"}, headers={"X-Voter-Id": "v1"}
    )
    assert voted.is_success, voted.text
    deadline = time.monotonic() + DEADLINE
    while client.get("/api/v1/results/m1").json()["results"] != {"A": 1}:  # flushed
        assert time.monotonic() < deadline, "the vote was never flushed"
        time.sleep(0.05)


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_promtool_accepts_a_real_scrape_of_metrics(scraped: Scraped) -> None:
    promtool = require_binary("promtool", "prometheus")
    check = subprocess.run(
        [promtool, "check", "metrics"], input=scraped.text, capture_output=True, text=True
    )
    # promtool lints too: exit 3 and a line per problem (a counter without _total ...)
    assert (check.returncode, check.stdout + check.stderr) == (0, "")


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = require_binary("promtool", "prometheus")
    check = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_metric_the_dashboard_queries_is_in_a_real_scrape(scraped: Scraped) -> None:
    exported = {
        sample.name
        for family in text_string_to_metric_families(scraped.text)
        for sample in family.samples
    }
    queried: set[str] = set()
    for query in dashboard_queries():
        named = set(re.findall(r"\bpolling_\w+", query))
        assert named, query
        assert named <= exported, (query, named - exported)
        queried |= named
    # the live streams and the rebalance have their panels
    for name in [
        "polling_stream_subscribers",
        "polling_stream_reads_total",
        "polling_rebalance_active",
        "polling_rebalance_polls_moved_total",
    ]:
        assert name in queried, name


def local_prometheus_config(folder: Path, target: str) -> Path:
    """deploy/prometheus.yml scraping `target` every second (the shipped 5 s otherwise)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = config["scrape_configs"]
    assert job["static_configs"] == [{"targets": ["app:8000"]}]
    job["static_configs"] = [{"targets": [target]}]
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextlib.contextmanager
def running_prometheus(binary: str, config: Path, folder: Path) -> Iterator[str]:
    port = free_port()
    log = (folder / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        log.close()


def test_a_real_prometheus_with_the_shipped_config_answers_every_dashboard_query(
    scraped: Scraped, tmp_path: Path
) -> None:
    """Every query of the dashboard, asked of a Prometheus that scraped the service, has
    at least one series (a rate needs two scrapes: the test waits for them)."""
    binary = require_binary("prometheus", "prometheus")
    config = local_prometheus_config(tmp_path, f"127.0.0.1:{scraped.service.port}")
    queries = dashboard_queries()
    empty = set(queries)
    with running_prometheus(binary, config, tmp_path) as url:
        deadline = time.monotonic() + DEADLINE
        while empty:
            assert time.monotonic() < deadline, (
                f"no data for {sorted(empty)}",
                (tmp_path / "prometheus.log").read_text()[-2000:],
            )
            try:
                for query in sorted(empty):
                    reply = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=10)
                    assert reply.status_code != 400, (query, reply.text)  # not PromQL
                    if reply.is_success and reply.json()["data"]["result"]:
                        empty.discard(query)
            except httpx.TransportError:
                pass  # not listening yet
            time.sleep(0.2)
