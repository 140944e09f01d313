"""Rules for poll and option ids, shared by the HTTP checks and the documented schemas."""

from __future__ import annotations

import re
from typing import Any

ID_MAX = 64
ID_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")
ID_RULE = "letters, digits, '-', '_' or '.'"
# `.` and `..` are refused: HTTP clients drop such path segments, so those polls could never
# be reached. The JSON Schema pattern says the same without look-ahead (pydantic's regex
# engine has none): starts with a non-dot, or `.` + non-dot, or `..` + at least one more.
DOT_IDS = (".", "..")
ID_PATTERN = (
    r"^(?:[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,63}"
    r"|\.[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,62}"
    r"|\.\.[A-Za-z0-9_.\-]{1,62})$"
)

ErrorItem = dict[str, Any]


def error(loc: list[str | int], msg: str, kind: str) -> ErrorItem:
    """One `{loc, msg, type}` item of a 422 answer."""
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
    if value in DOT_IDS:
        return error(loc, f"{name} must not be '.' or '..'", "string_pattern_mismatch")
    return None
