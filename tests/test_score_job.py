"""The scoring job as users run it: a SIGKILLed run resumes to the same output, and 2 processes equal 1.

Scores are compared for exact equality: a chunk is always scored in the same length-sorted batches
whatever the run or world size, every process runs one torch thread, so the floats are bitwise equal.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_until_chunks_then_sigkill, write_random_pool

from deita_train.jsonl import read_jsonl
from deita_train.scoring import ScoreConfig, score_pool


pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data_prep" / "score.py"
N_RECORDS = 40


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Pool, two tiny scorers and the output of one clean, uninterrupted 1-process run."""
    from deita_train.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("score_job")
    write_random_pool(root / "pool.jsonl", N_RECORDS, index_key=True)
    comp = make_tiny_checkpoint(root / "complexity", seed=1, initializer_range=0.2)
    qual = make_tiny_checkpoint(root / "quality", seed=2, initializer_range=0.2)
    args = {
        "input_path": str(root / "pool.jsonl"),
        "complexity_model": str(comp),
        "quality_model": str(qual),
        "max_length": 160,  # some turns get truncated, so the policy is part of what must resume identically
        "chunk_size": 1,
        "batch_size": 4,
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses below (OMP_NUM_THREADS=1)
    try:
        counts = score_pool(ScoreConfig(output_dir=str(root / "clean"), **args))
    finally:
        torch.set_num_threads(threads)
    assert counts["in"] == N_RECORDS + 1 and counts["rejected_load"] == 1
    assert counts["complexity_truncated_turns"] + counts["quality_truncated_turns"] > 0
    return root, args


def _cli(args: dict, out_dir: Path) -> list[str]:
    flat = [x for k, v in args.items() for x in (f"--{k}", str(v))]
    return [str(SCRIPT), *flat, "--output_dir", str(out_dir)]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    return env


def _same_output(a: Path, b: Path) -> None:
    scored_a, scored_b = read_jsonl(a / "scored.jsonl"), read_jsonl(b / "scored.jsonl")
    assert [r["id"] for r in scored_a] == [r["id"] for r in scored_b]
    assert len({r["id"] for r in scored_a}) == len(scored_a) == N_RECORDS
    for ra, rb in zip(scored_a, scored_b):
        assert ra == rb, f"record {ra['id']} differs"  # scores bitwise equal, nothing else changed either
    assert read_jsonl(a / "rejects.jsonl") == read_jsonl(b / "rejects.jsonl")


def test_sigkill_mid_run_then_rerun_equals_uninterrupted_run(job, tmp_path):
    root, args = job
    out = tmp_path / "killed"
    chunks = out / "chunks"
    survived = run_until_chunks_then_sigkill(
        [sys.executable, *_cli(args, out)], _env(), chunks, "chunk-*.jsonl", tmp_path / "run1.log"
    )
    assert 3 <= len(survived) < N_RECORDS, "the kill must land mid-run"
    assert not (out / "scored.jsonl").exists()

    rerun = subprocess.run([sys.executable, *_cli(args, out)], env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    # chunks finished before the kill were kept, not redone
    assert {n: (chunks / n).stat().st_mtime_ns for n in survived} == survived
    _same_output(out, root / "clean")


def test_two_processes_score_the_same_as_one(job, tmp_path):
    root, args = job
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *_cli(args, out)]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and "rank 1: loading scorer" in run.stderr  # both ranks did work
    assert len(list((out / "chunks").glob("chunk-*.jsonl"))) == N_RECORDS
    _same_output(out, root / "clean")
