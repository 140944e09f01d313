"""Errors the service raises for a request; the API maps each to one status code and an
error `type`, so a client can tell "not counted, retry" from "outcome unknown"."""

from __future__ import annotations


class VoteRejected(Exception):
    """The request cannot be served now: 503 with `Retry-After` unless a subclass says else.
    Nothing was counted."""

    status = 503
    retry_after: int | None = 5
    kind = "unavailable"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TooManyOptions(VoteRejected):
    status = 422
    retry_after = None
    kind = "too_many_options"


class BacklogFull(VoteRejected):
    """The poll's node holds too many (poll, option) pairs waiting for a flush."""

    kind = "backlog_full"


class LargerThanBacklog(VoteRejected):
    """A bulk request that alone holds more pairs for a node than the backlog cap."""

    status = 413
    retry_after = None
    kind = "larger_than_backlog"


class ShuttingDown(VoteRejected):
    """The service is flushing before it exits."""

    kind = "shutting_down"


class JournalUnavailable(VoteRejected):
    """The write-ahead journal could not be written; the failed write was undone."""

    kind = "journal_unavailable"


class NodeDown(VoteRejected):
    """The poll's node could not be reached, and the request certainly did not reach it."""

    kind = "node_unavailable"


class OutcomeUnknown(VoteRejected):
    """The votes may or may not have been counted (a reply was lost, an fsync or an undo
    failed). Retrying may count them twice unless the request carries an idempotency key."""

    kind = "outcome_unknown"


class ResultsUnavailable(VoteRejected):
    """The poll's node is down and no snapshot is cached."""

    kind = "node_unavailable"


class PollNotFound(VoteRejected):
    status = 404
    retry_after = None
    kind = "poll_not_found"


class PollExists(VoteRejected):
    status = 409
    retry_after = None
    kind = "poll_exists"


class PollClosed(VoteRejected):
    status = 409
    retry_after = None
    kind = "poll_closed"


class VotesExist(VoteRejected):
    """The change needs a poll nobody has answered yet (reopening a closed one)."""

    status = 409
    retry_after = None
    kind = "votes_exist"


class AlreadyVoted(VoteRejected):
    """The voter has used every vote the poll allows; this one was not counted."""

    status = 409
    retry_after = None
    kind = "already_voted"


class IdempotencyKeyReused(VoteRejected):
    """The Idempotency-Key was used before for a different request."""

    status = 409
    retry_after = None
    kind = "idempotency_key_reused"


class ResultsHidden(VoteRejected):
    """A hidden poll's results, asked for without the organiser's token before the reveal."""

    status = 403
    retry_after = None
    kind = "results_hidden"


class RebalanceBlocked(Exception):
    """Start-up cannot move the polls whose owner changed (a node is down); it stops, and the
    next start resumes the move."""


class StoreChanged(Exception):
    """The journal holds batches sealed for the other kind of store (ring nodes while on a
    cluster, or the reverse): whether they landed there cannot be told here, so start-up stops
    rather than risk counting them twice."""


HIDDEN = ResultsHidden("results are hidden until the organiser reveals them")
