"""The results endpoints as a shared HTTP cache (nginx, a CDN) can serve them.

- A public answer (an ad-hoc poll, or a defined poll whose results everyone may see) says
  `Cache-Control: public, max-age=<RESULTS_MAX_AGE_SECONDS>` and carries an `ETag`; a
  request whose `If-None-Match` names it gets 304 with no body.
- Hidden results (the organiser's view) say `private, no-store`; errors, and the 403 of
  hidden results, say `no-store`: no shared cache ever keeps them.
- A defined poll's results come from the last state this instance read (`ReadStates`: the
  Pushpin publisher's reads, or a results request's), at most `max_age` old, so however many
  requests arrive an instance reads the poll's node at most once per `max_age`.

ETags are weak (equal ETags: the same results, whichever node label `served_via` names): a
defined poll's is the state's version (`read_states.version_of`); an ad-hoc poll's a digest
of its counts, since two instances may show the same total with different unflushed votes.
"""

from __future__ import annotations

import hashlib

import msgspec

from app.api import defined, handlers
from app.api.handlers import Headers, Reply, invalid_reply, rejected_reply
from app.api.validation import InvalidInput, check_poll_id
from app.services.defined_polls import DefinedPolls
from app.services.errors import HIDDEN, VoteRejected
from app.services.live_results import Reader, ReadFailed, Snapshot
from app.services.polling_service import PollingService
from app.services.read_states import ReadStates
from app.storage.defined import PollRecord

NO_STORE = (b"cache-control", b"no-store")
PRIVATE = (b"cache-control", b"private, no-store")


def public(max_age: int) -> tuple[bytes, bytes]:
    if max_age <= 0:
        return b"cache-control", b"public, no-cache"
    return b"cache-control", b"public, max-age=%d" % max_age


def matches(etag: bytes, if_none_match: bytes | None) -> bool:
    """The weak comparison `If-None-Match` uses."""
    if if_none_match is None:
        return False
    wanted = {tag.strip().removeprefix(b"W/") for tag in if_none_match.split(b",")}
    return b"*" in wanted or etag.removeprefix(b"W/") in wanted


def with_validators(
    reply: Reply, etag: bytes, cache_control: tuple[bytes, bytes], if_none_match: bytes | None
) -> Reply:
    status, body, headers = reply
    extra: Headers = [cache_control, (b"etag", etag)]
    if matches(etag, if_none_match):
        return 304, b"", extra
    return status, body, [*headers, *extra]


def no_store(reply: Reply) -> Reply:
    status, body, headers = reply
    return status, body, [*headers, NO_STORE]


async def adhoc_results(
    service: PollingService, poll_id: str, max_age: int, if_none_match: bytes | None
) -> Reply:
    reply = await handlers.results(service, poll_id)
    if reply[0] != 200:
        return no_store(reply)
    payload = msgspec.json.decode(reply[1])
    counts = msgspec.json.encode([sorted(payload["results"].items()), payload.get("stale")])
    etag = b'W/"%s"' % hashlib.blake2b(counts, digest_size=12).hexdigest().encode()
    return with_validators(reply, etag, public(max_age), if_none_match)


def results_signature(record: PollRecord) -> tuple[object, ...]:
    """What a defined poll's public results depend on, hidden words included."""
    return (tuple(sorted(record.counts.items())), record.closed, tuple(sorted(record.hidden)))


def public_snapshot(polls: DefinedPolls, record: PollRecord) -> Snapshot:
    """A defined poll's public results as one state (the results endpoint's body), for the
    cache and the live streams alike."""
    served_via = polls.store.served_via(record.definition.poll_id)
    return Snapshot(
        handlers.encode(defined.results_payload(record, served_via)),
        results_signature(record),
        record.total,
        final=record.closed,
        hidden=not defined.results_visible(record, organiser=False),
        moderated=record.moderated,
        redefined=record.redefined,
        made_at=record.definition.created_at,
    )


def defined_snapshot(polls: DefinedPolls, poll_id: str) -> Reader:
    """Reads what `GET /polls/{poll_id}/results` answers (no history point: the stream's
    reader records those)."""

    async def read() -> Snapshot:
        try:
            record = await polls.load(poll_id)
        except VoteRejected as exc:
            raise ReadFailed(rejected_reply(exc)) from exc
        return public_snapshot(polls, record)

    return read


async def defined_results(
    polls: DefinedPolls,
    states: ReadStates,
    poll_id: str,
    organiser: bool,
    max_age: int,
    if_none_match: bytes | None,
) -> Reply:
    try:
        check_poll_id(poll_id)
        state = await states.read(f"def:{poll_id}", defined_snapshot(polls, poll_id))
    except InvalidInput as exc:
        return no_store(invalid_reply(exc.errors))
    except ReadFailed as exc:
        return no_store(exc.reply)
    if state.snapshot.hidden and not organiser:
        return no_store(rejected_reply(HIDDEN))
    cache_control = PRIVATE if state.snapshot.hidden else public(max_age)
    # the version, and a digest of the body: a hidden words entry changes the body, not
    # the version (the counts stay), and a revalidating cache must not keep showing it
    digest = hashlib.blake2b(state.snapshot.body, digest_size=6).hexdigest().encode()
    etag = b'W/"%d.%s"' % (state.version, digest)
    return with_validators((200, state.snapshot.body, []), etag, cache_control, if_none_match)
