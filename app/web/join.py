"""Joining an event by its code: the box at `/` for a browser, and `/j?code=...` that the
box's plain form asks (it works with JavaScript off) and sends on to `/j/{CODE}`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from app.services.events import normalise_code
from app.web.pages import page

router = APIRouter(include_in_schema=False)


def wants_html(request: Request) -> bool:
    """A browser asks for `text/html`; every other client (curl, health checks) does not."""
    return "text/html" in request.headers.get("accept", "")


def normalised_code(typed: str) -> str | None:
    """What a person typed, as a code (app/services/events.py: spaces and dashes dropped,
    upper case); None when it cannot be a code at all. A dropped look-alike (`S` typed for `5`) is
    resolved when the code is looked up."""
    return normalise_code(typed)


def join_page(request: Request, typed: str = "", status: int = 200) -> Response:
    message = "That is not a code: it has 6 letters and digits" if status != 200 else None
    return page(request, "join.html", status, typed=typed, message=message)


@router.get("/j")
async def join_by_form(request: Request, code: str = "") -> Response:
    normalised = normalised_code(code[:64])
    if normalised is None:
        return join_page(request, code[:64], 422)
    return RedirectResponse(f"/j/{normalised}", status_code=303)
