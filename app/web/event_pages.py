"""The pages of an event: the audience's `/j/{code}` (a phone) and the presenter's
`/present/e/{event_id}`.

Both are server-rendered first: the audience page shows the current question as a plain
form that posts to `/j/{code}` (it works with JavaScript off); with JavaScript,
static/audience.js follows the event's stream and shows each new question without a
reload. The event itself is read through the JSON API (own_api.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, quote

import msgspec
from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

from app.api import defined
from app.api.deps import DefinedDep
from app.api.responses import read_request_body
from app.api.voters import cross_origin
from app.core.ids import id_error
from app.services.errors import VoteRejected
from app.web import own_api
from app.web.join import normalised_code
from app.web.pages import page
from app.web.routes import qr_svg

router = APIRouter(include_in_schema=False)

# What a voter is told after the plain form's vote, by the vote API's answer.
FORM_MESSAGES = {
    200: "Your answer counted",
    "already_voted": "You already answered this question",
    "poll_closed": "This question is closed",
    "cross_origin": "Answers are taken only from this event's own page",
    "no_cookie": "Your browser must accept cookies to answer: open this page again",
    "invalid": "That answer does not fit this question",
    "unavailable": "Your answer could not be taken just now: please try again",
    "too_large": "That form was too large: open this page again",
    "stale": "The presenter has moved on: here is the current question",
}


def current_poll_id(event: dict[str, Any]) -> str | None:
    current = event.get("current", event.get("current_poll_id"))
    if isinstance(current, dict):
        current = current.get("poll_id")
    return current if isinstance(current, str) and current else None


def _not_found(request: Request) -> Response:
    return page(request, "not_found.html", 404, what="event")


async def _event_by_code(request: Request, code: str) -> dict[str, Any] | Response:
    normalised = normalised_code(code)
    if normalised is None:
        return _not_found(request)
    status, event = await own_api.api_get(request, own_api.code_path(normalised))
    if status == 404 or (status == 422 and event is not None):
        return _not_found(request)
    if status != 200 or not isinstance(event, dict):
        return page(request, "unavailable.html", 503)
    return event


async def _question(polls: Any, poll_id: str | None) -> dict[str, Any] | None:
    """The current question's description, None for the waiting screen (or a poll gone)."""
    if poll_id is None or id_error(["poll_id"], poll_id):
        return None
    try:
        return defined.describe(await polls.load(poll_id))
    except VoteRejected:
        return None


def _audience(
    request: Request,
    event: dict[str, Any],
    poll: dict[str, Any] | None,
    message: str | None = None,
    status: int = 200,
) -> Response:
    response = page(request, "audience.html", status, event=event, poll=poll, message=message)
    secure = request.url.scheme == "https"
    cookies = request.app.state.voter_cookies
    set_cookie = defined.cookie_to_set(cookies, request.headers.get("cookie"), secure)
    if set_cookie:
        response.headers["set-cookie"] = set_cookie
    return response


@router.get("/j/{code}")
async def audience_page(code: str, request: Request, polls: DefinedDep) -> Response:
    event = await _event_by_code(request, code)
    if isinstance(event, Response):
        return event
    if event.get("code") != code:  # typed in lower case or with a look-alike: the real code
        return RedirectResponse(f"/j/{quote(str(event.get('code')), safe='')}", status_code=303)
    poll = await _question(polls, current_poll_id(event))
    return _audience(request, event, poll)


def vote_body(poll: dict[str, Any], form: dict[str, list[str]]) -> bytes:
    """The JSON vote body that a plain form's fields stand for, by the question's type."""
    kind = poll.get("type", "single")
    body: dict[str, Any]
    if kind == "multiple":
        body = {"option_ids": form.get("option_ids", [])}
    elif kind == "rating":
        raw = form.get("value", [""])[0].strip()
        body = {"value": int(raw) if raw.lstrip("-").isdigit() and len(raw) < 5 else raw}
    elif kind == "words":
        body = {"words": [w for w in form.get("words", []) if w.strip()]}
    else:
        body = {"option_id": form.get("option_id", [""])[0]}
    return msgspec.json.encode(body)


def _form_message(status: int, answer: bytes) -> str:
    if status == 200:
        return FORM_MESSAGES[200]
    try:
        payload = msgspec.json.decode(answer)
    except msgspec.DecodeError:
        payload = None
    kind = payload.get("type") if isinstance(payload, dict) else None
    if isinstance(kind, str) and kind in FORM_MESSAGES:
        return FORM_MESSAGES[kind]
    if status == 422:
        detail = payload.get("detail") if isinstance(payload, dict) else None
        if isinstance(detail, list) and any("x-voter-id" in str(d.get("loc")) for d in detail):
            return FORM_MESSAGES["no_cookie"]
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            return f"{FORM_MESSAGES['invalid']}: {detail[0].get('msg', '')}"
        return FORM_MESSAGES["invalid"]
    return FORM_MESSAGES["unavailable"]


@router.post("/j/{code}")
async def audience_form_vote(code: str, request: Request, polls: DefinedDep) -> Response:
    """The plain form's answer (JavaScript off), counted by the same vote API."""
    event = await _event_by_code(request, code)
    if isinstance(event, Response):
        return event
    current = current_poll_id(event)
    poll = await _question(polls, current)
    if cross_origin(request.headers.get("origin"), request.headers.get("host")):
        return _audience(request, event, poll, FORM_MESSAGES["cross_origin"], 403)
    raw = await read_request_body(request, defined.MAX_VOTE_BODY)
    if raw is None:
        return _audience(request, event, poll, FORM_MESSAGES["too_large"], 413)
    form = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    if poll is None or form.get("poll_id", [""])[0] != current:
        return _audience(request, event, poll, FORM_MESSAGES["stale"], 409)
    headers = defined.VoteHeaders(cookie=request.headers.get("cookie"))
    cookies = request.app.state.voter_cookies
    status, answer, _ = await defined.vote(
        polls, cookies, poll["poll_id"], vote_body(poll, form), headers
    )
    return _audience(request, event, poll, _form_message(status, answer), status)


@router.get("/present/e/{event_id}")
async def event_presenter_page(event_id: str, request: Request) -> Response:
    if id_error(["event_id"], event_id):
        return _not_found(request)
    status, event = await own_api.api_get(request, own_api.event_path(event_id))
    if status in (404, 422):
        return _not_found(request)
    if status != 200 or not isinstance(event, dict):
        return page(request, "unavailable.html", 503)
    code = str(event.get("code", ""))
    base = str(request.base_url).rstrip("/")
    join_url = f"{base}/j/{code}"
    return page(
        request,
        "present_event.html",
        event_id=event_id,
        title=str(event.get("title", "")),
        code=code,
        join_base=base.split("://", 1)[-1],
        qr=qr_svg(join_url),
    )
