"""The guides hold together: every relative link in README.md and docs/*.md points to a file
in the repository (never outside it) and, with `#anchor`, to a heading there (GitHub's
anchors: lower case, spaces to '-', punctuation dropped); every test a guide names exists;
and the metrics table lists exactly what a real scrape of /metrics exports."""

from __future__ import annotations

import re
from pathlib import Path

from app.devtools.local_nodes import LocalNode
from tests.conftest import running_app, settings_for

ROOT = Path(__file__).resolve().parent.parent
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|<img[^>]*\ssrc=\"([^\"]+)\"")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
# `tests/test_x.py`, `test_x.py::test_name`, and `::test_name` for the file named last.
TEST_REF = re.compile(r"(?:tests/)?(test_\w+\.py)(?:::(\w+))?|::(test_\w+)")


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text())):
        base = anchor(heading)
        name, n = base, 0
        while name in found:  # a repeated heading gets -1, -2, ...
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def links(path: Path) -> list[str]:
    prose = CODE.sub("", FENCE.sub("", path.read_text()))
    return [a or b for a, b in LINK.findall(prose)]


def broken(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        where, _, fragment = target.partition("#")
        file = (path.parent / where).resolve() if where else path
        if "shared" in Path(where).parts or not file.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
        elif not file.exists():
            problems.append(f"{target}: no such file")
        elif fragment and (file.suffix != ".md" or fragment not in anchors(file)):
            problems.append(f"{target}: no heading with that anchor in {file.name}")
    return [f"{path.relative_to(ROOT)}: {p}" for p in problems]


def test_the_anchor_rule_is_githubs() -> None:
    assert anchor("Exposing `make run`") == "exposing-make-run"
    assert anchor("Two instances: how far apart their answers are") == (
        "two-instances-how-far-apart-their-answers-are"
    )
    assert anchor("Changing the ring (`services/migration.py`, `storage/mover.py`)") == (
        "changing-the-ring-servicesmigrationpy-storagemoverpy"
    )


def test_every_link_in_the_guides_resolves() -> None:
    assert len(GUIDES) > 5
    problems = [p for guide in GUIDES for p in broken(guide)]
    assert not problems, "\n".join(problems)


def defined_tests(file: Path) -> set[str]:
    return set(re.findall(r"^(?:async )?def (test_\w+)\(", file.read_text(), re.M))


def test_every_test_the_guides_name_exists() -> None:
    missing = []
    for guide in GUIDES:
        current: str | None = None
        for file, name, continued in TEST_REF.findall(guide.read_text()):
            current = file or current
            name = name or continued
            if current is None:
                continue
            path = ROOT / "tests" / current
            if not path.exists():
                missing.append(f"{guide.name}: tests/{current}")
            elif name and name not in defined_tests(path):
                missing.append(f"{guide.name}: tests/{current}::{name}")
    assert not missing, "\n".join(missing)


def documented_metrics() -> set[str]:
    """The metric names in the metrics table of the operator's guide."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text[text.index("\n## Metrics") :]
    section = section[: section.index("\n## ", 1)]
    rows = [line for line in section.splitlines() if line.startswith("| `polling_")]
    return {name for row in rows for name in re.findall(r"`(polling_\w+)", row.split("|")[1])}


async def test_the_metrics_table_lists_every_metric_a_scrape_exports(
    two_nodes: list[LocalNode], tmp_path: Path
) -> None:
    settings = settings_for(two_nodes, journal_dir=str(tmp_path / "journal"))
    async with running_app(settings) as (client, _):
        await client.post("/api/v1/vote/p", json={"option_id": "A"})
        scrape = (await client.get("/metrics")).text
    exported = set(re.findall(r"^# TYPE (\w+) ", scrape, re.M))
    assert "polling_stream_reads_total" in exported
    # A histogram's `<name>_created` (when it began) comes with it; the guide says so.
    created = {n for n in exported if n.endswith("_created") and n[: -len("_created")] in exported}
    assert documented_metrics() == exported - created
    assert "_created" in (ROOT / "docs" / "operations.md").read_text()
