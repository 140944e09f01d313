"""Input checks shared by every path that takes a poll or option id."""

from __future__ import annotations

import msgspec

from app.core.ids import ID_CHARS, ID_MAX, ID_PATTERN, ID_RULE, ErrorItem, error, id_error

__all__ = [
    "ID_CHARS",
    "ID_MAX",
    "ID_PATTERN",
    "ID_RULE",
    "MAX_VOTE_BODY",
    "ErrorItem",
    "InvalidInput",
    "check_poll_id",
    "error",
    "id_error",
    "parse_vote_body",
]

MAX_VOTE_BODY = 1024


class InvalidInput(Exception):
    """One or more fields are wrong. `errors` are `{loc, msg, type}` items naming each."""

    def __init__(self, errors: list[ErrorItem]) -> None:
        super().__init__(errors)
        self.errors = errors


def check_poll_id(poll_id: str) -> None:
    problem = id_error(["path", "poll_id"], poll_id)
    if problem:
        raise InvalidInput([problem])


_decode_json = msgspec.json.Decoder().decode


def parse_vote_body(body: bytes) -> str:
    """The option id from a `{"option_id": "A"}` body, or InvalidInput naming the problem."""
    try:
        data = _decode_json(body)
    except msgspec.DecodeError:
        raise InvalidInput([error(["body"], "body must be valid JSON", "json_invalid")]) from None
    except RecursionError:  # `[[[[...`: msgspec stops at the interpreter's recursion limit
        raise InvalidInput([error(["body"], "body is nested too deeply", "json_invalid")]) from None
    if not isinstance(data, dict):
        raise InvalidInput(
            [error(["body"], 'body must be a JSON object like {"option_id": "A"}', "object_type")]
        )
    if "option_id" not in data:
        raise InvalidInput([error(["body", "option_id"], "option_id is required", "missing")])
    option_id = data["option_id"]
    problem = id_error(["body", "option_id"], option_id)
    if problem:
        raise InvalidInput([problem])
    if len(data) > 1:
        extra = next(key for key in data if key != "option_id")
        message = f"unknown field {extra!r}: the body holds only option_id"
        raise InvalidInput([error(["body", extra], message, "extra_forbidden")])
    return str(option_id)
