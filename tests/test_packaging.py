"""`pip install .` packages only `app`, and `live-polling` runs the service."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from app import cli
from app.core.config import load_settings
from app.core.http_protocol import PROTOCOL
from app.devtools.local_nodes import free_port

ROOT = Path(__file__).resolve().parent.parent
NOT_SOURCES = shutil.ignore_patterns(
    ".venv", ".git", ".data", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"
)


def test_the_wheel_holds_only_the_app_package_and_the_live_polling_script(
    tmp_path: Path,
) -> None:
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)  # the build writes into its source
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = tmp_path.glob("live_polling-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    metadata = [n for n in names if n.split("/")[0].endswith(".dist-info")]
    assert {n.split("/")[0] for n in names} - {metadata[0].split("/")[0]} == {"app"}
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "app").rglob("*.py")}
    assert sources == {n for n in names if n.endswith(".py")}
    web = ROOT / "app" / "web"
    pages = {
        p.relative_to(ROOT).as_posix() for d in ("templates", "static") for p in (web / d).iterdir()
    }
    assert pages <= set(names)  # the templates and static files of the pages too
    assert "[console_scripts]\nlive-polling = app.cli:main" in scripts


def test_cli_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(redis_nodes="", workers=3)
    monkeypatch.delenv("PORT", raising=False)
    args = cli.parse_args([], settings)
    assert (args.host, args.port, args.workers) == ("127.0.0.1", 8000, 3)
    monkeypatch.setenv("PORT", "9001")
    assert cli.parse_args([], settings).port == 9001
    args = cli.parse_args(["--host", "0.0.0.0", "--port", "1234", "--workers", "2"], settings)
    assert (args.host, args.port, args.workers) == ("0.0.0.0", 1234, 2)
    for bad in [["--port", "http"], ["--port", "70000"], ["--workers", "0"], ["--verbose"]]:
        with pytest.raises(SystemExit):
            cli.parse_args(bad, settings)


def test_cli_runs_uvicorn_with_uvloop_and_the_header_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, object]] = []
    monkeypatch.setattr(cli.uvicorn, "run", lambda app, **options: calls.append(options))
    monkeypatch.setenv("REDIS_NODES", "")
    cli.main(["--port", "8123"])
    [options] = calls
    assert options["loop"] == "uvloop" and options["http"] == PROTOCOL
    assert options["factory"] is True and options["port"] == 8123


def test_cli_serves_and_stops_on_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "--port", str(port)],
        env={**os.environ, "REDIS_NODES": "", "PORT": "1", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        for _ in range(400):  # until it listens
            assert process.poll() is None, process.communicate()[0]
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert answer.json() == {"status": "healthy"}
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        assert process.returncode in (0, -signal.SIGTERM), output  # uvicorn re-raises it
        assert "all held votes flushed" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
