"""Stage runner for multi-step jobs (`make demo`, the end-to-end recipe): progress, caching, a record per stage.

A stage is redone only when its inputs (content hashes) or its config changed, or when its outputs
are missing. Each stage writes `<out_dir>/<name>/stage.json` with the stamp, the summary it
returned, and how long it took, so a second run reuses finished stages and the final report can
read every stage's counts.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deita_train.jsonl import file_sha256, write_json
from deita_train.sharded import fingerprint


logger = logging.getLogger(__name__)


@dataclass
class Stage:
    """`run(stage_dir)` does the work and returns a JSON-able summary (counts, paths, metrics)."""

    name: str
    run: Callable[[Path], dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    inputs: Sequence[Path] = ()
    outputs: Sequence[str] = ()  # paths relative to the stage dir that must exist for a reuse


class StageRunner:
    def __init__(self, out_dir: str | Path, force: bool = False) -> None:
        self.out_dir = Path(out_dir)
        self.force = force
        self.records: list[dict[str, Any]] = []

    def stamp(self, stage: Stage) -> str:
        hashes = [(str(p), file_sha256(p) if Path(p).exists() else None) for p in stage.inputs]
        return fingerprint(stage.name, stage.config, hashes)

    def _current_record(self, stage: Stage, stamp: str) -> dict[str, Any] | None:
        """The stored record of `stage` if it is still valid (same stamp, outputs present), else None."""
        stage_dir = self.out_dir / stage.name
        record_path = stage_dir / "stage.json"
        if self.force or not record_path.exists():
            return None
        old = json.loads(record_path.read_text())
        if old.get("stamp") != stamp or not all((stage_dir / o).exists() for o in stage.outputs):
            return None
        return old

    def is_current(self, stage: Stage) -> bool:
        return self._current_record(stage, self.stamp(stage)) is not None

    def run(self, stage: Stage, index: int | None = None, total: int | None = None) -> dict[str, Any]:
        stage_dir = self.out_dir / stage.name
        stamp = self.stamp(stage)
        tag = f"[{index}/{total}] " if index is not None else ""
        old = self._current_record(stage, stamp)
        if old is not None:
            logger.info(
                "%s%s: inputs and config unchanged, reusing (%.1fs originally)", tag, stage.name, old["seconds"]
            )
            old["reused"] = True
            self.records.append(old)
            return old["summary"]
        logger.info("%s%s: running", tag, stage.name)
        stage_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        summary = stage.run(stage_dir)
        seconds = time.perf_counter() - start
        record = {"name": stage.name, "stamp": stamp, "seconds": seconds, "summary": summary, "reused": False}
        write_json(stage_dir / "stage.json", record)
        self.records.append(record)
        logger.info("%s%s: done in %.1fs", tag, stage.name, seconds)
        return summary

    def run_all(self, stages: Sequence[Stage]) -> list[dict[str, Any]]:
        for i, stage in enumerate(stages, start=1):
            self.run(stage, i, len(stages))
        return self.records
