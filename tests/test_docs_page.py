"""The OpenAPI page, rendered by a real headless Chromium with no internet: every endpoint
is listed (Swagger UI is served by the app itself, not a CDN)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable

import pytest

from tests.browser import CHROMIUM, CHROMIUM_FLAGS
from tests.conftest import ServiceProcess

FLAGS = [
    "--headless",
    *CHROMIUM_FLAGS,
    "--virtual-time-budget=15000",  # run the page's scripts and fetches to completion
]


def rendered_dom(url: str) -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    return result.stdout


def test_docs_page_lists_every_endpoint_offline(
    start_service: Callable[..., ServiceProcess],
) -> None:
    service = start_service({"REDIS_NODES": "", "API_TOKEN": "x"})
    dom = rendered_dom(f"{service.url}/docs")
    for path in [
        "/",
        "/api/v1/vote/{poll_id}",
        "/api/v1/votes",
        "/api/v1/results/{poll_id}",
        "/api/v1/health",
    ]:
        assert f'data-path="{path}"' in dom, path
    for summary in ["Cast one vote", "Current results of a poll", "Ingest many votes"]:
        assert summary in dom
