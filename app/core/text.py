"""What a line of text from an organiser or a voter may hold: the one rule behind event
titles, questions and option labels (app/schemas/text.py) and words entries
(app/services/question_types.py).

Refused, anywhere in the text: control characters (Unicode category Cc: U+0000-U+001F,
U+007F-U+009F, tab and line feed included), the line and paragraph separators U+2028 and
U+2029, and the bidi embeddings, overrides and isolates U+202A-U+202E and U+2066-U+2069,
which show the characters after them in another order than they are stored ("Trojan
Source"). Everything else is kept: accents, emoji and their joiners (U+200D), tag
characters of flags, marks such as U+200E, characters newer than this Python's Unicode.
"""

from __future__ import annotations

import unicodedata

BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
REFUSED_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
LINE_RULE = "one line of text without control characters, line breaks or bidi overrides"


def refused_character(text: str) -> str | None:
    """The first character of `text` that no line of text may hold, or None."""
    for c in text:
        if c in BIDI_CONTROLS or unicodedata.category(c) in REFUSED_CATEGORIES:
            return c
    return None


def named(c: str) -> str:
    """`U+000A` and, where Unicode gives one, its name: what a 422 message shows."""
    name = unicodedata.name(c, "")
    return f"U+{ord(c):04X}" + (f" ({name})" if name else "")
