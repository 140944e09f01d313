"""`live-polling`: the service under uvicorn (uvloop, httptools with the header cap) on the
nodes the settings name (`REDIS_NODES`, `.env`). It starts no nodes; `make run` does."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import uvicorn

from app.core.config import Settings, SettingsError, load_settings
from app.core.http_protocol import PROTOCOL


def parse_args(argv: Sequence[str] | None, settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="live-polling", description="Run the live polling service."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port",
        type=int,
        default=os.environ.get("PORT", "8000"),  # argparse converts a string default too
        help="port to listen on (default: $PORT or 8000)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=settings.workers,
        help=f"worker processes (default: WORKERS, now {settings.workers})",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be from 0 to 65535, not {args.port}")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def serve(host: str, port: int, workers: int) -> None:
    """Run the app until Ctrl-C or SIGTERM; it flushes everything it holds before exiting."""
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http=PROTOCOL,
        access_log=False,
    )


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    args = parse_args(argv, settings)
    serve(args.host, args.port, args.workers)


if __name__ == "__main__":
    main()
