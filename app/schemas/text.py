"""Text fields an organiser types (event titles, questions, option labels): one line,
checked by the shared rule of app/core/text.py (422 `control_character` naming the
character), surrounding spaces removed, blank refused."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from app.core.text import LINE_RULE, named, refused_character


def _one_line(value: str, info: ValidationInfo) -> str:
    field = info.field_name or "text"
    refused = refused_character(value)
    if refused is not None:
        raise PydanticCustomError(
            "control_character",
            "{field} must be {rule}: it holds {char}",
            {"field": field, "rule": LINE_RULE, "char": named(refused)},
        )
    kept = value.strip()
    if not kept:
        raise PydanticCustomError("string_too_short", "{field} must not be blank", {"field": field})
    return kept


def _limits(max_length: int) -> Any:
    return Field(
        min_length=1, max_length=max_length, description=f"1-{max_length} characters, {LINE_RULE}."
    )


Title = Annotated[str, _limits(200), AfterValidator(_one_line)]
Question = Annotated[str, _limits(500), AfterValidator(_one_line)]
Label = Annotated[str, _limits(200), AfterValidator(_one_line)]
