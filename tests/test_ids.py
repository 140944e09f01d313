"""Poll and option id rules: one home below both the HTTP layer and the schemas."""

from __future__ import annotations

import subprocess
import sys

import app.api.validation as validation
import app.core.ids as ids


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
