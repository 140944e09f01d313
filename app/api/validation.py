"""Input checks shared by every path that takes a poll or option id."""

from __future__ import annotations

import re
from typing import Any

import msgspec

ID_MAX = 64
ID_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")
ID_RULE = "letters, digits, '-', '_' or '.'"
ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
MAX_VOTE_BODY = 1024

ErrorItem = dict[str, Any]


class InvalidInput(Exception):
    """One or more fields are wrong. `errors` are `{loc, msg, type}` items naming each."""

    def __init__(self, errors: list[ErrorItem]) -> None:
        super().__init__(errors)
        self.errors = errors


def error(loc: list[str | int], msg: str, kind: str) -> ErrorItem:
    return {"loc": loc, "msg": msg, "type": kind}


def id_error(loc: list[str | int], value: object) -> ErrorItem | None:
    """Why `value` is not a valid poll or option id, or None if it is."""
    name = str(loc[-1])
    if not isinstance(value, str):
        return error(loc, f"{name} must be a string", "string_type")
    if not value:
        return error(loc, f"{name} must not be empty", "string_too_short")
    if len(value) > ID_MAX:
        return error(loc, f"{name} must be at most {ID_MAX} characters", "string_too_long")
    if not ID_CHARS.fullmatch(value):
        return error(loc, f"{name} may only contain {ID_RULE}", "string_pattern_mismatch")
    return None


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
