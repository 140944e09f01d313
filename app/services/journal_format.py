"""How journal files are written and read back, and what counts as damage.

A segment line is one record: a crc32 (8 hex digits), then one or more
`poll TAB option TAB n` triples, all joined by TABs, then a newline. One record is one vote,
or a whole bulk request's share for one node. The checksum and the final newline make a
record all or nothing: a torn or damaged line fails its check and is set aside whole. There
is no unchecked form: lines of the first journal format (no checksum) are damage too, since
one flipped bit can turn a record's TAB into a letter and the line into one that parses.

A sealed file is its JSON, a newline, its crc32, a newline (older ones: the JSON alone).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from app.storage.base import Batch

ID = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
NUMBER = re.compile(r"[0-9]{1,16}")
MAX_LINE_COUNT = 10**12  # a bulk request adds at most 10,000 x 1,000,000 to one pair
MAX_BATCH_COUNT = 10**15  # the node's own limit for a stored count
Entry = tuple[str, str, int]


class Damaged(ValueError):
    """A journal file or line that cannot be trusted."""


def encode_record(entries: list[Entry]) -> bytes:
    payload = "\t".join(f"{p}\t{o}\t{n}" for p, o, n in entries).encode()
    return b"%08x\t%s\n" % (zlib.crc32(payload), payload)


def _count(text: str, limit: int) -> int:
    if not NUMBER.fullmatch(text):
        raise Damaged(f"count {text[:20]!r} is not a whole number")
    n = int(text)
    if not 1 <= n <= limit:
        raise Damaged(f"count {n} is out of range")
    return n


def _entries(fields: list[str]) -> list[Entry]:
    if not fields or len(fields) % 3:
        raise Damaged("wrong number of fields")
    entries = []
    for i in range(0, len(fields), 3):
        poll_id, option_id, n = fields[i : i + 3]
        if not (ID.fullmatch(poll_id) and ID.fullmatch(option_id)):
            raise Damaged("not a valid poll or option id")
        entries.append((poll_id, option_id, _count(n, MAX_LINE_COUNT)))
    return entries


def _fields(line: bytes) -> list[str]:
    try:
        return line.decode("ascii").split("\t")
    except UnicodeDecodeError:
        raise Damaged("not ASCII") from None


def decode_record(line: bytes) -> list[Entry]:
    crc, *payload = _fields(line)
    text = "\t".join(payload)
    if not re.fullmatch(r"[0-9a-f]{8}", crc) or int(crc, 16) != zlib.crc32(text.encode()):
        raise Damaged("checksum does not match")
    return _entries(payload)


@dataclass
class SegmentContents:
    entries: list[Entry] = field(default_factory=list)
    damaged: list[bytes] = field(default_factory=list)  # whole lines, torn last line included


def decode_segment(data: bytes) -> SegmentContents:
    found = SegmentContents()
    *lines, tail = data.split(b"\n")
    for line in lines:
        try:
            found.entries += decode_record(line)
        except Damaged:
            found.damaged.append(line)
    if tail:  # torn last write: never acknowledged (the record had no newline yet)
        found.damaged.append(tail)
    return found


@dataclass
class SealedContents:
    batches: list[Batch]
    segments: list[str]


def encode_sealed(batches: list[Batch], segments: list[str]) -> bytes:
    body = json.dumps(
        {
            "version": 2,
            "segments": segments,
            "batches": [
                {"flusher_id": b.flusher_id, "seq": b.seq, "node": b.node, "counts": b.counts}
                for b in batches
            ],
        },
        separators=(",", ":"),
    ).encode()
    return b"%s\n%08x\n" % (body, zlib.crc32(body))


def _batch(raw: Any) -> Batch:
    if not isinstance(raw, dict):
        raise Damaged("a batch is not an object")
    flusher_id, seq, node, counts = (raw.get(k) for k in ("flusher_id", "seq", "node", "counts"))
    if not (isinstance(flusher_id, str) and ID.fullmatch(flusher_id)):
        raise Damaged("bad flusher id")
    if not (isinstance(seq, int) and seq > 0 and isinstance(node, str) and ID.fullmatch(node)):
        raise Damaged("bad seq or node")
    if not isinstance(counts, dict) or not counts:
        raise Damaged("bad counts")
    checked: dict[str, dict[str, int]] = {}
    for poll_id, options in counts.items():
        if not (ID.fullmatch(poll_id) and isinstance(options, dict) and options):
            raise Damaged("bad poll")
        checked[poll_id] = {}
        for option_id, n in options.items():
            if not ID.fullmatch(option_id) or type(n) is not int or not 1 <= n <= MAX_BATCH_COUNT:
                raise Damaged("bad option or count")
            checked[poll_id][option_id] = n
    return Batch(flusher_id, seq, node, checked)


def decode_sealed(data: bytes) -> SealedContents:
    body = data
    if data.endswith(b"\n"):
        body, _, crc = data[:-1].rpartition(b"\n")
        if not re.fullmatch(rb"[0-9a-f]{8}", crc) or int(crc, 16) != zlib.crc32(body):
            raise Damaged("checksum does not match")
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise Damaged("not JSON") from None
    if not isinstance(parsed, dict):
        raise Damaged("not an object")
    batches, segments = parsed.get("batches"), parsed.get("segments")
    if not isinstance(batches, list) or not batches or not isinstance(segments, list):
        raise Damaged("no batches")
    if not all(isinstance(s, str) and re.fullmatch(r"votes-[\w.\-]+\.log", s) for s in segments):
        raise Damaged("bad segment name")
    return SealedContents([_batch(b) for b in batches], segments)
