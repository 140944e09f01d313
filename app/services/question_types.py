"""The question types: what a vote body of each type holds, how it is checked and
normalised into the payload the node's script counts (app/storage/question_scripts.py),
and what the voter's own record says.

- single: `{"option_id": "A"}`; up to `votes_per_voter` votes.
- quiz: `{"option_id": "A"}`; one answer; the definition names the `correct` option.
- multiple: `{"option_ids": ["A", "C"]}`: 1..max_choices distinct known options.
- rating: `{"value": 4}`: an integer from `scale_min` to `scale_max`.
- words: `{"words": ["Rust", "go"]}`: 1..max_words entries of 1..40 characters after
  normalising (NFKC, case-folded, invisible Cf characters such as bidi overrides
  removed, white space, tabs and line breaks collapsed to one space; 40 code points),
  distinct after normalising; any other control character is refused (app/core/text.py).
"""

from __future__ import annotations

import unicodedata
from typing import Any

from app.core.ids import error, id_error
from app.core.text import LINE_RULE, named, refused_character
from app.storage.defined import PollDefinition

TYPES = ("single", "multiple", "rating", "words", "quiz")
FIELD = {
    "single": "option_id",
    "quiz": "option_id",
    "multiple": "option_ids",
    "rating": "value",
    "words": "words",
}
VOTE_FIELDS = frozenset(FIELD.values())
MAX_WORD_CHARS = 40
MAX_WORDS = 5  # entries per voter: a vote body stays under 1 KiB
SCALE_LIMIT = 100  # rating values stay within -100..100


class InvalidVote(Exception):
    """A vote body that does not fit its poll's type: `errors` name the field."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["msg"])
        self.errors = errors


def _bad(field: str, message: str, kind: str) -> InvalidVote:
    return InvalidVote([error(["body", field], message, kind)])


def normalise_word(text: str) -> str:
    """NFKC, case-folded, invisible format characters (zero-width spaces and joiners, BOM,
    bidi overrides: Unicode category Cf) removed, surrounding and repeated white space
    removed; entries that look the same count as one."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    visible = "".join(c for c in folded if unicodedata.category(c) != "Cf")
    return " ".join(visible.split())


def vote_payload(d: PollDefinition, data: dict[str, Any]) -> str:
    """The payload the node counts for this body, or InvalidVote naming the field."""
    field = FIELD[d.type]
    if field not in data:
        present = sorted(VOTE_FIELDS & data.keys())
        hint = f"; {present[0]} is for another question type" if present else ""
        raise _bad(field, f"a {d.type} question takes {field}{hint}", "missing")
    extra = sorted(k for k in data if k != field)
    if extra:
        message = f"unknown field {extra[0]!r}: a {d.type} vote holds only {field}"
        raise InvalidVote([error(["body", extra[0]], message, "extra_forbidden")])
    value = data[field]
    if d.type in ("single", "quiz"):
        return _option(d, value, field)
    if d.type == "multiple":
        return _options(d, value)
    if d.type == "rating":
        return _rating(d, value)
    return _words(d, value)


def _option(d: PollDefinition, value: Any, field: str) -> str:
    problem = id_error(["body", field], value)
    if problem:
        raise InvalidVote([problem])
    if value not in d.option_ids:
        raise _bad(field, f"{field} must be one of {d.option_ids}", "unknown_option")
    return str(value)


def _options(d: PollDefinition, value: Any) -> str:
    if not isinstance(value, list) or not value:
        raise _bad("option_ids", "option_ids must be a non-empty list of option ids", "list_type")
    if len(value) > d.max_choices:
        message = f"option_ids holds at most {d.max_choices} options (max_choices)"
        raise _bad("option_ids", message, "too_many_choices")
    for option in value:
        _option(d, option, "option_ids")
    if len(set(value)) != len(value):
        raise _bad("option_ids", "option_ids must not repeat an option", "repeated_option")
    return "\n".join(value)


def _rating(d: PollDefinition, value: Any) -> str:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad("value", "value must be an integer", "int_type")
    if not d.scale_min <= value <= d.scale_max:
        message = f"value must be from {d.scale_min} to {d.scale_max}"
        raise _bad("value", message, "out_of_range")
    return str(value)


def _words(d: PollDefinition, value: Any) -> str:
    if not isinstance(value, list) or not value:
        raise _bad("words", "words must be a non-empty list of strings", "list_type")
    if len(value) > d.max_words:
        raise _bad("words", f"words holds at most {d.max_words} entries", "too_many_words")
    entries = []
    for word in value:
        if not isinstance(word, str):
            raise _bad("words", "each entry of words must be a string", "string_type")
        entry = normalise_word(word)
        if not entry:
            raise _bad("words", "an entry of words is empty", "string_too_short")
        refused = refused_character(entry)  # the rule of every line of text
        if refused is not None:
            message = f"an entry of words must be {LINE_RULE}: it holds {named(refused)}"
            raise _bad("words", message, "control_character")
        if len(entry) > MAX_WORD_CHARS:
            message = f"each entry of words is at most {MAX_WORD_CHARS} characters"
            raise _bad("words", message, "string_too_long")
        entries.append(entry)
    if len(set(entries)) != len(entries):
        raise _bad("words", "words must not repeat an entry", "repeated_entry")
    return "\n".join(entries)


def vote_body(d: PollDefinition, payload: str) -> dict[str, Any]:
    """The vote body a payload stands for (the voter's own record)."""
    parts = payload.split("\n") if payload else []
    if d.type == "rating":
        return {"value": int(payload)}
    if d.type in ("multiple", "words"):
        return {FIELD[d.type]: parts}
    return {"option_id": parts[-1]} if parts else {}


def allowance(d: PollDefinition) -> int:
    """How many choices one vote may hold (the phone's "choices left" before voting)."""
    if d.type == "multiple":
        return d.max_choices
    if d.type == "words":
        return d.max_words
    if d.type == "single":
        return d.votes_per_voter
    return 1
