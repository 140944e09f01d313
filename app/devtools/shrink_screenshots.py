"""Copies the screenshots the session guide shows from tests/screenshots/session/ (written
by tests/test_session_pages.py) into docs/screenshots/, shrunk: at most 960 px wide and a
64-colour palette, so the repository keeps a few tens of KiB per picture.

    .venv/bin/python -m pytest tests/test_session_pages.py
    .venv/bin/python -m app.devtools.shrink_screenshots
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image  # Pillow comes with matplotlib (requirements-dev.txt)

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "screenshots" / "session"
TARGET = ROOT / "docs" / "screenshots"
SHOWN = [
    "presenter-single",
    "presenter-rating",
    "presenter-words",
    "phone-single",
    "phone-words",
    "organiser",
    "fit-options-1280x720",
    "fit-words-1280x720",
    "fit-quiz-1920x1080",
]
MAX_WIDTH = 960


def shrink(name: str) -> Path:
    image = Image.open(SOURCE / f"{name}.png").convert("RGB")
    if image.width > MAX_WIDTH:
        height = round(image.height * MAX_WIDTH / image.width)
        image = image.resize((MAX_WIDTH, height), Image.Resampling.LANCZOS)
    target = TARGET / f"{name}.png"
    image.quantize(64).save(target, optimize=True)
    return target


def main() -> None:
    TARGET.mkdir(parents=True, exist_ok=True)
    for name in SHOWN:
        target = shrink(name)
        print(f"{target.relative_to(ROOT)}: {target.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
