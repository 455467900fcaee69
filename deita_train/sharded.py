"""Sharded, resumable jobs over a pool (scoring, embedding): N processes, chunk files, merge at the end.

The work list (record ids in the caller's order, e.g. sorted by length) is cut into fixed chunks.
Chunk ``k`` belongs to process ``k % world_size``. Each finished chunk is written atomically
(temporary file + rename) as its own file, so a process killed at any moment leaves only whole
chunks behind: a rerun skips them and redoes the rest. Nothing is lost and nothing is written
twice, whatever the world size of the rerun. A ``plan.json`` fixes the work list and a fingerprint
of the inputs and config; a rerun whose plan differs refuses to mix its results with the old ones.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deita_train.jsonl import write_json


class PlanMismatchError(RuntimeError):
    """The output directory holds chunks of a different job (other inputs, config or order)."""


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (input hashes, config fields)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


@dataclass
class DistInfo:
    rank: int
    world_size: int
    state: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            self.state.wait_for_everyone()


def dist_info(cpu: bool | None = None) -> DistInfo:
    """Rank and world size from accelerate; refuse a launch that asked for N processes but got one."""
    import torch
    from accelerate import PartialState

    if cpu is None:
        cpu = not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    asked = int(os.environ.get("WORLD_SIZE", "1"))
    if asked > 1 and state.num_processes != asked:
        raise RuntimeError(
            f"launched with WORLD_SIZE={asked} but accelerate sees {state.num_processes} process(es): "
            "the processes would each do the whole job. Use an accelerate config with distributed_type "
            "MULTI_GPU (use_cpu: true on CPU) or torchrun."
        )
    return DistInfo(state.process_index, state.num_processes, state)


@dataclass
class ShardedJob:
    """The chunk plan of one job in `out_dir`; see the module docstring for the guarantees."""

    out_dir: Path
    ids: Sequence[str]
    chunk_size: int
    fingerprint: str
    suffix: str = ".jsonl"

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("ids must be unique: a sharded job keys every result by id")

    @property
    def chunk_dir(self) -> Path:
        return self.out_dir / "chunks"

    @property
    def n_chunks(self) -> int:
        return (len(self.ids) + self.chunk_size - 1) // self.chunk_size

    def chunk_ids(self, k: int) -> list[str]:
        return list(self.ids[k * self.chunk_size : (k + 1) * self.chunk_size])

    def chunk_path(self, k: int) -> Path:
        return self.chunk_dir / f"chunk-{k:06d}{self.suffix}"

    def _plan(self) -> dict[str, Any]:
        ids_hash = hashlib.sha256("\n".join(self.ids).encode()).hexdigest()
        return {
            "fingerprint": self.fingerprint,
            "n_ids": len(self.ids),
            "ids_sha256": ids_hash,
            "chunk_size": self.chunk_size,
            "suffix": self.suffix,
        }

    def prepare(self, dist: DistInfo | None = None) -> None:
        """Write plan.json on the main process (or check it matches), then sync all processes."""
        plan_path = self.out_dir / "plan.json"
        if dist is None or dist.is_main:
            self.chunk_dir.mkdir(parents=True, exist_ok=True)
            if plan_path.exists():
                old = json.loads(plan_path.read_text())
                if old != self._plan():
                    diff = sorted(k for k in old if old.get(k) != self._plan().get(k))
                    raise PlanMismatchError(
                        f"{self.out_dir} holds partial results of a different job (differs in {diff}); "
                        "use a new output directory or delete it to start over"
                    )
            else:
                write_json(plan_path, self._plan())
        if dist is not None:
            dist.barrier()

    def pending(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """This process's chunks that have no finished file yet."""
        return [k for k in range(rank, self.n_chunks, world_size) if not self.chunk_path(k).exists()]

    def done(self) -> bool:
        return all(self.chunk_path(k).exists() for k in range(self.n_chunks))


def save_array_chunk(path: Path, ids: Sequence[str], array: np.ndarray, **extra: np.ndarray) -> None:
    """Atomically write a chunk of vectors with their ids, plus any per-row arrays (`extra`), as one npz."""
    reserved = {"ids", "array"} & set(extra)
    if reserved:
        raise ValueError(f"extra arrays may not be named {sorted(reserved)}")
    buf = io.BytesIO()
    np.savez(buf, ids=np.asarray(list(ids), dtype=object).astype(str), array=array, **extra)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_array_chunk(path: Path) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """(ids, vectors, extra arrays) of a chunk written by `save_array_chunk`."""
    with np.load(path, allow_pickle=False) as z:
        extra = {k: z[k] for k in z.files if k not in ("ids", "array")}
        return [str(x) for x in z["ids"]], z["array"], extra
