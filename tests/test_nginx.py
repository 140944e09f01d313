"""The shipped nginx configs, run by the real nginx in front of real service processes
(uvicorn, real valkey nodes), with only their listen port, upstream and temp paths
rewritten (tests/local_nginx.py): `deploy/nginx.conf` in front of one service, and
`deploy/nginx.replicas.conf` in front of two. Votes, pages and live streams pass through;
what nginx refuses past its limits is answered in the app's shape; both replicas serve, and
a defined poll's count is the same on either."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.api.bulk import MAX_BULK_BODY
from app.devtools.local_nodes import LocalNode, free_port
from app.devtools.uvicorn_process import UvicornProcess
from tests.local_nginx import DEPLOY, LocalNginx
from tests.real_binaries import require_binary

TOKEN = "nginx-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TWO_OPTIONS = [{"id": "A", "label": "a"}, {"id": "B", "label": "b"}]
# Each read of a stream or a reply waits at most this long for bytes: a deadline for a
# test that would otherwise hang, not a measure of speed.
DEADLINE = 20.0


@dataclass
class Layout:
    """nginx in front of the service processes it balances."""

    nginx: LocalNginx
    services: list[UvicornProcess]


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    return require_binary("nginx", "nginx")


@pytest.fixture(scope="module")
def nodes() -> Iterator[list[LocalNode]]:
    started: list[LocalNode] = []
    try:
        for _ in range(2):
            started.append(LocalNode(free_port(), appendfsync="always").start())
        yield started
    finally:
        for node in started:
            node.kill()


def service_env(nodes: list[LocalNode]) -> dict[str, str]:
    return {
        "REDIS_NODES": ",".join(node.url for node in nodes),
        "API_TOKEN": TOKEN,
        "VOTER_SECRET": "the-same-secret-on-every-replica",
        "BATCH_INTERVAL_SECONDS": "0.05",
        "STREAM_INTERVAL_SECONDS": "0.2",
    }


def run_layout(
    binary: str, shipped: str, folder: Path, nodes: list[LocalNode], replicas: int
) -> Iterator[Layout]:
    services: list[UvicornProcess] = []
    nginx: LocalNginx | None = None
    try:
        for _ in range(replicas):
            services.append(UvicornProcess(env=service_env(nodes), quiet=True))
        for service in services:
            service.wait_ready()
        upstreams = [f"127.0.0.1:{service.port}" for service in services]
        nginx = LocalNginx(binary, DEPLOY / shipped, folder, upstreams).start()
        yield Layout(nginx, services)
    finally:
        if nginx is not None:
            nginx.stop()
        for service in services:
            service.kill()


@pytest.fixture(scope="module")
def single(
    nginx_binary: str, nodes: list[LocalNode], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Layout]:
    """deploy/nginx.conf in front of one service."""
    folder = tmp_path_factory.mktemp("nginx-single")
    yield from run_layout(nginx_binary, "nginx.conf", folder, nodes, replicas=1)


@pytest.fixture(scope="module")
def replicas(
    nginx_binary: str, nodes: list[LocalNode], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Layout]:
    """deploy/nginx.replicas.conf in front of two services on the same nodes."""
    folder = tmp_path_factory.mktemp("nginx-replicas")
    yield from run_layout(nginx_binary, "nginx.replicas.conf", folder, nodes, replicas=2)


def public(layout: Layout) -> httpx.Client:
    return httpx.Client(base_url=layout.nginx.url, timeout=DEADLINE)


def create_poll(client: httpx.Client, poll_id: str) -> None:
    definition = {"poll_id": poll_id, "question": f"Which {poll_id}?", "options": TWO_OPTIONS}
    created = client.post("/api/v1/polls", json=definition, headers=AUTH)
    assert created.status_code == 201, created.text


def vote_as(client: httpx.Client, poll_id: str, voter: str, option: str = "A") -> httpx.Response:
    return client.post(
        f"/api/v1/polls/{poll_id}/vote", json={"option_id": option}, headers={"X-Voter-Id": voter}
    )


@pytest.mark.parametrize("shipped", ["nginx.conf", "nginx.replicas.conf"])
def test_nginx_accepts_each_shipped_config(shipped: str, nginx_binary: str, tmp_path: Path) -> None:
    upstreams = ["127.0.0.1:9"] * (2 if "replicas" in shipped else 1)
    check = LocalNginx(nginx_binary, DEPLOY / shipped, tmp_path, upstreams).check()
    assert check.returncode == 0, check.stderr


def test_votes_and_results_pass_through_nginx(single: Layout) -> None:
    with public(single) as client:
        assert client.post("/api/v1/vote/ng-adhoc", json={"option_id": "A"}).status_code == 200
        create_poll(client, "ng-defined")
        assert vote_as(client, "ng-defined", "v1").status_code == 200
        again = vote_as(client, "ng-defined", "v1", "B")
        assert again.status_code == 409, again.text  # one vote per voter, through nginx too
        results = client.get("/api/v1/polls/ng-defined/results").json()
        assert results["total_votes"] == 1
        assert client.get("/api/v1/results/ng-adhoc").status_code == 200


def test_pages_through_nginx_build_the_join_url_from_the_public_host(single: Layout) -> None:
    with public(single) as client:
        create_poll(client, "ng-pages")
        presenter = client.get("/present/ng-pages")
        assert presenter.status_code == 200
        # nginx passes the Host with its port: the QR code points voters at nginx, not the app
        assert f"{single.nginx.url}/p/ng-pages" in presenter.text
        voter = client.get("/p/ng-pages")
        assert voter.status_code == 200 and "Which ng-pages?" in voter.text
        assert client.get("/organise").status_code == 200


class EventReader:
    """The events of one open Server-Sent Events answer, read as they arrive."""

    def __init__(self, reply: httpx.Response) -> None:
        self.lines = reply.iter_lines()

    def next_event(self) -> dict[str, object]:
        """The next event's data; blocks until it arrives (httpx's read timeout ends a
        stream that stays silent, so a proxy holding the events fails the test)."""
        data: list[str] = []
        for line in self.lines:
            if line.startswith("data:"):
                data.append(line[5:].strip())
            elif line == "" and data:
                event: dict[str, object] = json.loads("\n".join(data))
                return event
        raise AssertionError("the stream ended")


# What an operator may well add to the http block: compressing text answers. The app's
# `X-Accel-Buffering: no` is what keeps a live stream live then (nginx otherwise holds the
# compressed events; tried by hand with `proxy_ignore_headers X-Accel-Buffering`).
GZIP = "    gzip on;\n    gzip_min_length 1;\n    gzip_types text/event-stream;\n"


@pytest.mark.parametrize("added", ["", GZIP], ids=["as shipped", "with gzip on"])
def test_a_live_stream_through_nginx_passes_each_event_while_it_stays_open(
    added: str, single: Layout, nginx_binary: str, tmp_path: Path
) -> None:
    """Each vote's event reaches the client while the stream stays open (a browser's
    Accept-Encoding sent). Were nginx to hold the events, the read would wait past its
    timeout and the test fail."""
    nginx = single.nginx
    if added:
        upstream = [f"127.0.0.1:{single.services[0].port}"]
        nginx = LocalNginx(nginx_binary, DEPLOY / "nginx.conf", tmp_path, upstream, added)
        nginx.start()
    try:
        headers = {"Accept-Encoding": "gzip, deflate"}
        with httpx.Client(base_url=nginx.url, timeout=DEADLINE, headers=headers) as client:
            poll = f"ng-live-{bool(added)}"
            assert client.post(f"/api/v1/vote/{poll}", json={"option_id": "A"}).is_success
            with client.stream("GET", f"/api/v1/results/{poll}/stream") as reply:
                assert reply.status_code == 200
                assert reply.headers["content-type"].startswith("text/event-stream")
                assert "content-length" not in reply.headers
                events = EventReader(reply)
                seen = events.next_event()["results"]
                for count in range(2, 5):
                    client.post(f"/api/v1/vote/{poll}", json={"option_id": "A"})
                    while seen != {"A": count}:  # the next event(s), up to this vote's
                        seen = events.next_event()["results"]
    finally:
        if nginx is not single.nginx:
            nginx.stop()


@pytest.mark.parametrize("layout_name", ["single", "replicas"])
def test_nginx_refuses_past_its_limits_in_the_app_shape(
    layout_name: str, request: pytest.FixtureRequest
) -> None:
    """The same limits in both shipped configs, at their edges: up to the app's own limit
    a request reaches the app; past it nginx answers as the app would (a URL too long to
    read stays nginx's own 414 page). /metrics is not on the public port."""
    layout: Layout = request.getfixturevalue(layout_name)
    with public(layout) as client:

        def bulk(size: int) -> httpx.Response:
            body = b"[" + b" " * (size - 2) + b"]"
            return client.post("/api/v1/votes", content=body, headers=AUTH)

        at_limit = bulk(MAX_BULK_BODY)
        # the app read all 2 MiB and refused the empty array: nginx passed the body on
        assert at_limit.status_code == 422 and "array" in at_limit.text, at_limit.text
        past = bulk(MAX_BULK_BODY + 1)
        assert past.status_code == 413
        assert past.json() == {"detail": f"request body must be at most {MAX_BULK_BODY} bytes"}

        assert client.get("/", headers={"X-Big": "a" * 7_000}).status_code == 200
        head_too_large = {"detail": "request header fields too large"}
        long_line = client.get("/", headers={"X-Big": "a" * 10_000})  # a line over 8 KiB
        assert (long_line.status_code, long_line.json()) == (431, head_too_large)
        many = {f"X-Big-{i}": "a" * 7_000 for i in range(5)}  # a head over 32 KiB
        long_head = client.get("/", headers=many)
        assert (long_head.status_code, long_head.json()) == (431, head_too_large)

        below = client.get("/api/v1/results/" + "p" * 7_000)  # reaches the app: bad id
        assert below.status_code == 422 and "detail" in below.json(), below.text
        assert client.get("/api/v1/results/" + "p" * 10_000).status_code == 414

        assert client.get("/metrics").status_code == 404


def accepted_defined_votes(service: UvicornProcess) -> float:
    """The replica's own count of defined votes it accepted, from its /metrics."""
    text = httpx.get(service.url + "/metrics", timeout=DEADLINE).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "polling_votes_accepted_total" and sample.labels == {
                "path": "defined"
            }:
                return sample.value
    raise AssertionError("no polling_votes_accepted_total{path=defined}")


def test_both_replicas_serve_and_agree_on_a_defined_polls_total(replicas: Layout) -> None:
    """Votes through nginx land on both replicas (each one's /metrics counts some); the
    poll's total_votes is the same through nginx and on each replica directly; a voter
    counted on one replica is refused by the other."""
    first, second = replicas.services
    before = [accepted_defined_votes(service) for service in replicas.services]
    with public(replicas) as client:
        create_poll(client, "ng-replicas")
        for i in range(20):
            r = vote_as(client, "ng-replicas", f"v{i}", "AB"[i % 2])
            assert r.status_code == 200, r.text
        through_nginx = client.get("/api/v1/polls/ng-replicas/results").json()["total_votes"]
    taken = [accepted_defined_votes(s) - b for s, b in zip(replicas.services, before, strict=True)]
    assert sum(taken) == 20 and min(taken) > 0, taken  # both replicas took votes
    totals = [
        httpx.get(f"{s.url}/api/v1/polls/ng-replicas/results").json()["total_votes"]
        for s in replicas.services
    ]
    assert totals == [through_nginx, through_nginx] == [20, 20]
    with httpx.Client(base_url=first.url) as one, httpx.Client(base_url=second.url) as other:
        assert vote_as(one, "ng-replicas", "w").status_code == 200
        assert vote_as(other, "ng-replicas", "w", "B").status_code == 409
