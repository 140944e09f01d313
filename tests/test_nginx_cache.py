"""deploy/nginx.cache.conf with Debian's nginx in front of a real service: polling clients
reach the service about once per poll per max-age; hidden results are never cached."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.devtools.local_nodes import free_port
from tests.conftest import NodeFactory, ServiceProcess

ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
pytestmark = pytest.mark.skipif(
    NGINX is None and os.environ.get("CI") != "true", reason="nginx is not installed"
)
TOKEN = "organiser-token"
ORGANISER = {"authorization": f"Bearer {TOKEN}"}
TEMP = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
CLIENTS = 40
SECONDS = 3.0


def cache_config(tmp_path: Path, listen: int, service_port: int) -> Path:
    """The shipped config on our ports and folders. Between it and the service, a plain
    nginx hop logs every request that reaches the service (origin.log): what we count."""
    hop = free_port()
    text = (ROOT / "deploy" / "nginx.cache.conf").read_text()
    text = text.replace("listen 8000;", f"listen 127.0.0.1:{listen};")
    text = text.replace("server app:8000;", f"server 127.0.0.1:{hop};")
    text = text.replace("/var/cache/nginx/results", f"{tmp_path}/cache")
    temp = "".join(f"    {kind}_temp_path {tmp_path}/{kind};\n" for kind in TEMP)
    origin = (
        f"    log_format origin '$request_uri';\n"
        f"    server {{\n        listen 127.0.0.1:{hop};\n"
        f"        access_log {tmp_path}/origin.log origin;\n"
        f"        location / {{ proxy_pass http://127.0.0.1:{service_port}; }}\n    }}\n"
    )
    text = text.replace("http {\n", "http {\n" + temp + origin, 1)
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


@pytest.fixture
def nginx_in_front(tmp_path: Path) -> Iterator[Callable[[int], str]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(service_port: int) -> str:
        listen = free_port()
        config = cache_config(tmp_path, listen, service_port)
        main = f"pid {tmp_path}/nginx.pid; daemon off; master_process off;"
        command = [str(NGINX), "-c", str(config), "-p", str(tmp_path), "-e", "stderr", "-g", main]
        started.append(subprocess.Popen(command))
        url = f"http://127.0.0.1:{listen}"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url + "/", timeout=1)
                return url
            except httpx.HTTPError:
                assert time.monotonic() < deadline and started[-1].poll() is None, "nginx"
                time.sleep(0.05)

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def origin_requests(tmp_path: Path) -> Counter[str]:
    return Counter((tmp_path / "origin.log").read_text().split())


async def poll_for(client: httpx.AsyncClient, url: str, until: float, seen: Counter[str]) -> None:
    while time.monotonic() < until:
        reply = await client.get(url)
        seen[f"{reply.status_code} {reply.headers.get('x-cache-status')}"] += 1


async def test_polling_crowds_reach_the_service_once_per_poll_per_max_age_and_hidden_never_cached(
    tmp_path: Path,
    start_node: NodeFactory,
    start_service: Callable[..., ServiceProcess],
    nginx_in_front: Callable[[int], str],
) -> None:
    node = start_node()
    service = start_service(
        {"REDIS_NODES": node.url, "API_TOKEN": TOKEN, "RESULTS_MAX_AGE_SECONDS": "1"}
    )
    front = nginx_in_front(service.port)
    api = f"{service.url}/api/v1"
    async with httpx.AsyncClient(timeout=30) as http:
        for poll_id, results in [("open", "live"), ("secret", "hidden")]:
            poll = {
                "poll_id": poll_id,
                "question": "Q?",
                "results": results,
                "options": [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}],
            }
            assert (
                await http.post(f"{api}/polls", json=poll, headers=ORGANISER)
            ).status_code == 201
        assert (await http.post(f"{api}/vote/adhoc", json={"option_id": "A"})).status_code == 200

    urls = {
        "/api/v1/results/adhoc": 200,
        "/api/v1/polls/open/results": 200,
        "/api/v1/polls/secret/results": 403,
    }
    seen: dict[str, Counter[str]] = {path: Counter() for path in urls}
    limits = httpx.Limits(max_connections=CLIENTS * len(urls))
    async with httpx.AsyncClient(timeout=30, limits=limits, base_url=front) as client:
        until = time.monotonic() + SECONDS
        await asyncio.gather(
            *(poll_for(client, path, until, seen[path]) for path in urls for _ in range(CLIENTS))
        )
        organiser = await client.get("/api/v1/polls/secret/results", headers=ORGANISER)
        again = await client.get("/api/v1/polls/secret/results", headers=ORGANISER)
    reached = origin_requests(tmp_path)
    for path, status in urls.items():
        asked = sum(seen[path].values())
        assert {k.split()[0] for k in seen[path]} == {str(status)}, seen[path]
        if status == 200:
            # about one request per max-age (1 s) reaches the service, however many ask
            assert reached[path] <= SECONDS + 3, (path, reached[path], asked)
            assert asked >= 5 * reached[path], (path, reached[path], asked)
        else:
            assert reached[path] == asked + 2  # hidden: every request (and the organiser's)
            assert not any("HIT" in k for k in seen[path])
    assert organiser.status_code == again.status_code == 200
    assert organiser.headers["cache-control"] == "private, no-store"
    assert again.headers["x-cache-status"] == "BYPASS"


async def test_results_answer_cache_headers_and_304(
    start_node: NodeFactory, start_service: Callable[..., ServiceProcess]
) -> None:
    node = start_node()
    service = start_service({"REDIS_NODES": node.url, "API_TOKEN": TOKEN})
    api = f"{service.url}/api/v1"
    async with httpx.AsyncClient(timeout=30) as http:
        poll = {
            "poll_id": "p",
            "question": "Q?",
            "options": [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}],
        }
        assert (await http.post(f"{api}/polls", json=poll, headers=ORGANISER)).status_code == 201
        for path in ["/results/p", "/polls/p/results"]:
            first = await http.get(api + path)
            assert first.headers["cache-control"] == "public, max-age=1"
            etag = first.headers["etag"]
            same = await http.get(api + path, headers={"if-none-match": etag})
            assert same.status_code == 304 and same.content == b""
            assert same.headers["etag"] == etag
        # a vote here changes the defined poll's state, its version and its ETag at once
        vote = await http.post(
            f"{api}/polls/p/vote", json={"option_id": "A"}, headers={"x-voter-id": "ann"}
        )
        assert vote.status_code == 200
        changed = await http.get(f"{api}/polls/p/results", headers={"if-none-match": etag})
        assert changed.status_code == 200 and changed.json()["total_votes"] == 1
        assert changed.headers["etag"] != etag
        missing = await http.get(f"{api}/polls/nope/results")
        assert missing.status_code == 404 and missing.headers["cache-control"] == "no-store"
        bad = await http.get(f"{api}/results/{'x' * 300}")
        assert bad.status_code == 422 and bad.headers["cache-control"] == "no-store"
