"""Errors the service raises for a request; the API maps each to one status code."""

from __future__ import annotations


class VoteRejected(Exception):
    """The request cannot be served now: 503 with `Retry-After` unless a subclass says else."""

    status = 503
    retry_after: int | None = 5

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TooManyOptions(VoteRejected):
    status = 422
    retry_after = None


class BacklogFull(VoteRejected):
    """The poll's node holds too many polls waiting for a flush."""


class ShuttingDown(VoteRejected):
    """The service is flushing before it exits."""


class JournalUnavailable(VoteRejected):
    """The write-ahead journal could not be written."""


class ResultsUnavailable(VoteRejected):
    """The poll's node is down and no snapshot is cached."""
