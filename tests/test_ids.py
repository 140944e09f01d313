"""Poll and option id rules: one home below both the HTTP layer and the schemas."""

from __future__ import annotations

import re
import string
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

import app.api.validation as validation
import app.core.ids as ids
from app.api.bulk import ALL_IDS, SEPARATOR

OK = set(string.ascii_letters + string.digits + "-_.")


def test_schemas_take_the_id_rules_from_core_not_from_the_api_layer() -> None:
    code = (
        "import sys, app.schemas.polls; "
        "print(sorted(m for m in sys.modules if m.startswith('app.api')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_id_rules_stay_importable_from_the_api_layer() -> None:
    for name in ["ID_MAX", "ID_CHARS", "ID_RULE", "ID_PATTERN", "ErrorItem", "error", "id_error"]:
        assert getattr(validation, name) is getattr(ids, name), name


id_like = st.text(alphabet="ab.-_/ \n", max_size=70) | st.sampled_from([".", "..", "...", ".a"])


@given(value=id_like)
def test_every_check_agrees_on_what_an_id_is(value: str) -> None:
    """The checks the handlers run, the documented schema pattern and the bulk fast check."""
    valid = ids.id_error(["path", "poll_id"], value) is None
    assert valid == (re.fullmatch(ids.ID_PATTERN, value) is not None)
    assert valid == (ALL_IDS.fullmatch(value) is not None)
    assert valid == (value not in {".", ".."} and 0 < len(value) <= 64 and not set(value) - OK)


@given(values=st.lists(id_like, min_size=1, max_size=5))
def test_the_bulk_fast_check_refuses_any_bad_id_among_many(values: list[str]) -> None:
    all_valid = all(ids.id_error(["body", 0, "poll_id"], v) is None for v in values)
    assert all_valid == (ALL_IDS.fullmatch(SEPARATOR.join(values)) is not None)
