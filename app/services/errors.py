"""Errors the service raises for a request; the API maps each to one status code."""

from __future__ import annotations


class VoteRejected(Exception):
    status = 503
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TooManyOptions(VoteRejected):
    status = 422


class BacklogFull(VoteRejected):
    status = 503
    retry_after = 5


class ShuttingDown(VoteRejected):
    status = 503
    retry_after = 5


class JournalUnavailable(VoteRejected):
    status = 503
    retry_after = 5


class ResultsUnavailable(VoteRejected):
    status = 503
    retry_after = 5
