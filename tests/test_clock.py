"""No wall clock in the exactly-once rules: a keyed request counts once whatever the
service's clock says. The service runs under libfaketime (its wall clock only; the node's
is real): skewed by 2 days, stepped by +2 days or +30 h between an attempt and its retry,
and a retry sent to a second instance whose clock is 2 days off."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import pytest

from app.devtools.local_nodes import LocalNode
from tests.conftest import ServiceProcess, stored_counts

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")

pytestmark = pytest.mark.skipif(
    not LIBFAKETIME.exists() and os.environ.get("CI") != "true",
    reason="libfaketime is not installed (apt-get install faketime)",
)


def faked(node: LocalNode, clock_file: Path) -> dict[str, str]:
    """A service on `node` whose wall clock is the offset written in `clock_file`, read
    again on every call (so the test can step it while the service runs)."""
    return {
        "REDIS_NODES": node.url,
        "BATCH_INTERVAL_SECONDS": "3600",
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME_TIMESTAMP_FILE": str(clock_file),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # timers and timeouts stay sane
    }


def keyed_vote(service: ServiceProcess, key: str) -> None:
    reply = httpx.post(
        f"{service.url}/api/v1/vote/p",
        json={"option_id": "A"},
        headers={"Idempotency-Key": key},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text


def service_now(service: ServiceProcess) -> float:
    """The service's own idea of now: the Date header it answers with."""
    date = httpx.get(service.url + "/", timeout=5).headers["date"]
    return parsedate_to_datetime(date).timestamp()


@pytest.mark.parametrize("skew", ["-2d", "+2d"])
def test_a_skewed_service_clock_never_counts_a_keyed_retry_twice(
    start_node: Callable[..., LocalNode],
    start_service: Callable[..., ServiceProcess],
    tmp_path: Path,
    skew: str,
) -> None:
    node = start_node()
    clock = tmp_path / "clock"
    clock.write_text(skew + "\n")
    service = start_service(faked(node, clock))
    assert abs(service_now(service) - time.time()) > 86_400  # the skew is really in place
    for _ in range(4):
        keyed_vote(service, "skewed")
    assert stored_counts(node, "p") == {"A": 1}


@pytest.mark.parametrize("step", ["+2d", "+30h", "-30h"])
def test_a_clock_step_between_attempt_and_retry_counts_once(
    start_node: Callable[..., LocalNode],
    start_service: Callable[..., ServiceProcess],
    tmp_path: Path,
    step: str,
) -> None:
    node = start_node()
    clock = tmp_path / "clock"
    clock.write_text("+0\n")
    service = start_service(faked(node, clock))
    keyed_vote(service, "stepped")
    before = service_now(service)
    clock.write_text(step + "\n")  # the step, while the service runs
    deadline = time.monotonic() + 10  # uvicorn renews its Date header once a second
    while abs(service_now(service) - before) < 86_400:
        assert time.monotonic() < deadline, "the service's clock did not step"
        time.sleep(0.1)
    keyed_vote(service, "stepped")
    keyed_vote(service, "stepped")
    assert stored_counts(node, "p") == {"A": 1}


def test_a_retry_sent_to_an_instance_two_days_off_counts_once(
    start_node: Callable[..., LocalNode],
    start_service: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    node = start_node()
    (tmp_path / "now").write_text("+0\n")
    (tmp_path / "off").write_text("+2d\n")
    first = start_service(faked(node, tmp_path / "now"))
    second = start_service(faked(node, tmp_path / "off"))
    keyed_vote(first, "moved-on")
    keyed_vote(second, "moved-on")
    keyed_vote(first, "moved-on")
    assert stored_counts(node, "p") == {"A": 1}
