"""The pages of a live room: the voter's, the presenter's and the organiser's.

Thin: each route asks the same `DefinedPolls` as the JSON API and renders a template. The
voter page works without JavaScript (a plain form POST); with it, a small module votes
through the JSON API instead and shows the same messages without a reload."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import segno
from fastapi import APIRouter, Request, Response
from markupsafe import Markup

from app.api import defined
from app.api.deps import DefinedDep
from app.api.responses import read_request_body
from app.api.voters import cross_origin
from app.core.ids import id_error
from app.services.defined_polls import UnknownOption
from app.services.errors import AlreadyVoted, PollClosed, PollNotFound, VoteRejected
from app.storage.defined import PollRecord
from app.web.pages import page

router = APIRouter(include_in_schema=False)

# What a voter is told, by outcome; voter.js shows the same texts (from the page).
MESSAGES = {
    "ok": "Your vote counted",
    "already_voted": "You already voted",
    "poll_closed": "This poll is closed",
    "unknown_option": "Please choose one of the options",
    "no_cookie": "Your browser must accept cookies to vote: open this page again",
    "unavailable": "Your vote could not be taken just now: please try again",
    "cross_origin": "Votes are taken only from this poll's own page: open it and vote there",
    "too_large": "That form was too large: open this page again and tap an option",
}


def _page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
    return page(request, name, status, **context)


def _problem(request: Request, exc: VoteRejected) -> Response:
    """The page for a poll that cannot be shown: 404 if it does not exist, else 503."""
    if isinstance(exc, PollNotFound):
        return _page(request, "not_found.html", 404)
    return _page(request, "unavailable.html", exc.status)


async def _load(request: Request, polls: DefinedDep, poll_id: str) -> PollRecord | Response:
    if id_error(["poll_id"], poll_id):
        return _page(request, "not_found.html", 404)
    try:
        return await polls.load(poll_id)
    except VoteRejected as exc:
        return _problem(request, exc)


def _outcome(exc: Exception) -> tuple[str, int]:
    if isinstance(exc, AlreadyVoted):
        return "already_voted", 409
    if isinstance(exc, PollClosed):
        return "poll_closed", 409
    if isinstance(exc, UnknownOption):
        return "unknown_option", 422
    assert isinstance(exc, VoteRejected)
    return "unavailable", exc.status


def _voter_page(
    request: Request, record: PollRecord, message: str | None = None, status: int = 200
) -> Response:
    """The question and a button per option; gives a browser without one its voter cookie."""
    response = _page(
        request,
        "voter.html",
        status,
        poll=record.definition,
        closed=record.closed,
        messages=MESSAGES,
        message=message,
    )
    cookies = request.app.state.voter_cookies
    secure = request.url.scheme == "https"
    set_cookie = defined.cookie_to_set(cookies, request.headers.get("cookie"), secure)
    if set_cookie:
        response.headers["set-cookie"] = set_cookie
    return response


@router.get("/p/{poll_id}", name="voter_page")
async def voter_page(poll_id: str, request: Request, polls: DefinedDep) -> Response:
    record = await _load(request, polls, poll_id)
    return record if isinstance(record, Response) else _voter_page(request, record)


@router.post("/p/{poll_id}")
async def voter_form_vote(poll_id: str, request: Request, polls: DefinedDep) -> Response:
    """The plain form's vote (JavaScript off): the same check and count as the JSON API."""
    record = await _load(request, polls, poll_id)
    if isinstance(record, Response):
        return record
    if cross_origin(request.headers.get("origin"), request.headers.get("host")):
        return _voter_page(request, record, MESSAGES["cross_origin"], 403)
    body = await read_request_body(request, defined.MAX_VOTE_BODY)
    if body is None:
        return _voter_page(request, record, MESSAGES["too_large"], 413)
    option_id = parse_qs(body.decode("utf-8", "replace")).get("option_id", [""])[0]
    cookies = request.app.state.voter_cookies
    voter = defined.voter_identity(cookies, None, request.headers.get("cookie"))  # cookie only
    if not isinstance(voter, str):
        return _voter_page(request, record, MESSAGES["no_cookie"], 422)
    try:
        await polls.vote(poll_id, option_id, voter)
    except PollNotFound:
        return _page(request, "not_found.html", 404)
    except (VoteRejected, UnknownOption) as exc:
        kind, status = _outcome(exc)
        return _voter_page(request, record, MESSAGES[kind], status)
    return _voter_page(request, record, MESSAGES["ok"])


def qr_svg(url: str) -> Markup | None:
    """The join URL as a QR code, an inline SVG that scales with its box; None when the
    URL is too long for one (the page then shows the URL alone)."""
    try:
        svg = segno.make(url, error="m").svg_inline(scale=1, border=2, omitsize=True)
    except segno.DataOverflowError:
        return None
    return Markup(svg)  # segno's own markup: paths only, no text from the request


@router.get("/present/{poll_id}")
async def presenter_page(poll_id: str, request: Request, polls: DefinedDep) -> Response:
    record = await _load(request, polls, poll_id)
    if isinstance(record, Response):
        return record
    join_url = str(request.url_for("voter_page", poll_id=poll_id))
    visible = defined.results_visible(record, organiser=False)
    results = defined.results_payload(record, "") if visible else None
    return _page(
        request,
        "presenter.html",
        poll=record.definition,
        closed=record.closed,
        results=results,
        join_url=join_url,
        qr=qr_svg(join_url),
    )


@router.get("/organise")
async def organiser_page(request: Request) -> Response:
    return _page(request, "organise.html")
