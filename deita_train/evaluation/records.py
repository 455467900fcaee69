"""Append-only JSONL logs that survive being killed mid-write.

Long evaluation jobs (answer generation, judging) write one record per finished unit of work, so
a killed run keeps what it finished. A kill can only damage the last line; on reopening, a final
line without its newline that does not parse is cut off, while a bad line anywhere else is an
error (that file was edited or corrupted, and silently dropping records is what we refuse to do).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)


def read_log(path: str | Path, repair: bool = True) -> list[dict[str, Any]]:
    """All records of an append log; a torn last line (a kill mid-write) is dropped and, with `repair`, cut off."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")  # `tail` is what follows the last newline: b"" for a clean file
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:
            raise ValueError(
                f"{path}:{lineno}: not valid JSON ({e}); the log is corrupt, not merely interrupted"
            ) from e
    if tail.strip():
        try:
            records.append(json.loads(tail))
        except ValueError:
            logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted run", path, len(tail))
            if repair:
                with open(path, "r+b") as f:
                    f.truncate(len(data) - len(tail))
        else:
            if repair:  # a whole record that lost only its newline: finish the line so appends start fresh
                with open(path, "ab") as f:
                    f.write(b"\n")
    elif tail and repair:
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(tail))
    return records


class AppendLog:
    """Append one JSON record per line, flushed and fsynced, so a kill loses at most the line being written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
