"""A start-up refusal is one line on stderr, never a traceback.

The typed errors that stop a start on purpose (the nodes' ring records name a server this
start lacks, the journal holds batches sealed for the other kind of store, a node may evict
keys) reach uvicorn as their message alone: Starlette reports a failed lifespan start with
the whole traceback, which `OneLineRefusals` replaces. Anything else (a bug) keeps its
traceback. A bad setting in the app factory is one line too (`settings_or_exit`).
"""

from __future__ import annotations

import sys
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import Settings, SettingsError, load_settings
from app.services.errors import RebalanceBlocked, StoreChanged
from app.storage.base import NodeMisconfigured

REFUSALS = (RebalanceBlocked, StoreChanged, NodeMisconfigured)
# uvicorn's exit code for a worker that failed before serving: its supervisor then stops
# instead of starting the worker again (which would fail the same way).
STARTUP_FAILURE = 3


def one_line(exc: BaseException) -> str:
    return f"start refused: {type(exc).__name__}: {' '.join(str(exc).split())}"


def settings_or_exit() -> Settings:
    """The settings from the environment; a bad one is one line on stderr and exit 3."""
    try:
        return load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(STARTUP_FAILURE) from None


class OneLineRefusals:
    """ASGI middleware: a lifespan start that failed with one of `REFUSALS` is reported to
    the server as `one_line(exc)`; every other message passes unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def report(message: Any) -> None:
            if message["type"] == "lifespan.startup.failed":
                # Sent from the router's `except` block: the error being handled is the cause.
                failure = sys.exception()
                if isinstance(failure, REFUSALS):
                    message = {**message, "message": one_line(failure)}
            await send(message)

        await self.app(scope, receive, report)
