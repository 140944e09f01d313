"""The Debian binaries some tests run for real (nginx, promtool, prometheus): where they
are, or a clear skip when one is missing -- but never in CI (`CI` set), where a missing
binary fails the test, since `.ci/run` installs them all."""

from __future__ import annotations

import os
import shutil

import pytest

# Debian puts nginx in /usr/sbin, which is not on every user's PATH.
SEARCHED = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in {"", "0", "false", "no"}


def require_binary(name: str, package: str) -> str:
    """The path of `name`; skips the test (fails it in CI) when it is not installed."""
    found = shutil.which(name, path=SEARCHED)
    if found:
        return found
    message = f"{name} is not installed (Debian: apt-get install {package})"
    if in_ci():
        pytest.fail(f"{message}; CI must run this test (.ci/run installs it)")
    pytest.skip(message)
