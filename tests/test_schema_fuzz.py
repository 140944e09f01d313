"""Schemathesis over every endpoint of the running service: no 500, every error names what
was wrong, every answer matches the documented schema."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection

from app.core.config import load_settings
from app.devtools.local_nodes import LocalNode, free_port
from app.devtools.uvicorn_process import UvicornProcess
from app.main import create_api

TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    nodes = [LocalNode(free_port(), appendfsync="always").start(), LocalNode(free_port()).start()]
    env = {
        "REDIS_NODES": ",".join(n.url for n in nodes),
        "API_TOKEN": TOKEN,
        "BATCH_INTERVAL_SECONDS": "0.5",
    }
    service = UvicornProcess(env=env)
    try:
        yield service.wait_ready().url
    finally:
        service.kill()
        for node in nodes:
            node.kill()


def operations() -> list[Any]:
    """Every documented operation, read from the app's own OpenAPI document, but the live
    results streams: a valid request to one is an answer that never ends (by design), which
    a request-and-check fuzzer cannot take. Their bad input (422, 403, 404, a malformed
    `Last-Event-ID`) is tested in tests/test_streams.py."""
    spec = create_api(load_settings(redis_nodes="")).openapi()
    found = [op.ok() for op in schemathesis.openapi.from_dict(spec).get_all_operations()]
    return [op for op in found if not op.path.endswith("/stream")]


def names_the_problem(response: Any) -> None:
    if response.status_code < 400:
        return
    body = response.json()
    detail = body["detail"]
    if isinstance(detail, list):
        assert detail and all(item["loc"] and item["msg"] for item in detail), body
    else:
        assert isinstance(detail, str) and detail, body


CASES = [
    (op, mode)
    for op in operations()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or op.path_parameters or op.body  # else nothing to break
]


@pytest.mark.parametrize(
    ("operation", "mode"), CASES, ids=[f"{op.label} {mode.value}" for op, mode in CASES]
)
def test_every_endpoint_survives_generated_input(
    operation: Any, mode: GenerationMode, service_url: str
) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"} if operation.path == "/api/v1/votes" else None

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case: Any) -> None:
        # schemathesis' own negative check does not count 413 (body too large) as a rejection
        response = case.call_and_validate(
            base_url=service_url, headers=headers, excluded_checks=[negative_data_rejection]
        )
        assert response.status_code < 500 or response.status_code == 503
        if mode is GenerationMode.NEGATIVE:
            assert 400 <= response.status_code < 500, response.text
        names_the_problem(response)

    check()
