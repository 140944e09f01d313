"""The shape of `app/` (docs/design.md, "Modules"): imports only run down the layers, no
import circle anywhere (type-only imports included), and a module over 400 lines says at
its top why it is one module."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
# Lower layers never import higher ones. `app.main`, `app.cli`, `app.rebalance`,
# `app.devtools` and `app.web` sit on top and may import anything.
LAYERS = ["app.core", "app.storage", "app.services", "app.schemas", "app.api"]
LONG = 400
REASON = "Long because"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(APP.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every `app.` module this file imports, at the top, inside functions, or for types."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("app"):
                found.add(node.module)
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("app")}
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in APP.rglob("*.py")}
    return {
        name: {m for m in imports(path) if m in modules} - {name} for name, path in modules.items()
    }


def layer(module: str) -> int | None:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return None


def test_no_module_imports_one_from_a_layer_above_it() -> None:
    upward = []
    for module, targets in graph().items():
        mine = layer(module)
        for target in targets:
            theirs = layer(target)
            if mine is not None and (theirs is None or theirs > mine):
                upward.append(f"{module} -> {target}")
    assert not upward


def test_there_is_no_import_circle_in_app() -> None:
    edges = graph()
    circles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(edges[module]):
            if state.get(target) == "open":
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert not circles


def test_a_module_over_400_lines_says_why_at_its_top() -> None:
    unexplained = []
    for path in APP.rglob("*.py"):
        lines = path.read_text().splitlines()
        docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
        if len(lines) > LONG and REASON not in docstring:
            unexplained.append(f"{path.relative_to(APP.parent)}: {len(lines)} lines")
    assert not unexplained
