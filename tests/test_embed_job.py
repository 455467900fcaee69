"""The embedding job as users run it: a SIGKILLed run resumes to the same bytes, and 2 processes equal 1.

Vectors are compared byte for byte: a chunk is always embedded in the same length-sorted batches
whatever the run or world size, and every process runs one torch thread, so the float16 matrices
are identical.
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

from deita_train.embedding import EmbedConfig, embed_pool
from deita_train.sharded import DistInfo


pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data_prep" / "embed.py"
N_RECORDS = 40


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_mistral):
    """The pool and the output of one clean, uninterrupted 1-process run (in this process)."""
    root = tmp_path_factory.mktemp("embed_job")
    write_random_pool(
        root / "pool.jsonl", N_RECORDS, max_reply_words=300, trailing_question_every=9, broken_at=7, broken_value="   "
    )
    args = {
        "input_path": str(root / "pool.jsonl"),
        "model_name_or_path": str(tiny_mistral),
        "max_length": 384,
        "chunk_size": 1,
        "batch_size": 4,
    }
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses below (OMP_NUM_THREADS=1)
    try:
        counts = embed_pool(EmbedConfig(output_dir=str(root / "clean"), **args), dist=DistInfo(0, 1))
    finally:
        torch.set_num_threads(threads)
    assert counts["in"] == N_RECORDS + 1 and counts["rejected"] == 1 and counts["truncated"] > 0
    return root, args


def _cli(args: dict, out_dir: Path) -> list[str]:
    flat = [x for k, v in args.items() for x in (f"--{k}", str(v))]
    return [str(SCRIPT), *flat, "--output_dir", str(out_dir)]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("WORLD_SIZE", None)
    return env


def _same_output(a: Path, b: Path) -> None:
    for name in ("embeddings.npy", "ids.json", "tokens.npy", "rejects.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs"
    ids = json.loads((a / "ids.json").read_text())
    assert len(ids) == len(set(ids)) == N_RECORDS
    assert (
        json.loads((a / "manifest.json").read_text())["counts"]
        == json.loads((b / "manifest.json").read_text())["counts"]
    )


def test_sigkill_mid_run_then_rerun_equals_uninterrupted_run(job, tmp_path):
    root, args = job
    out = tmp_path / "killed"
    chunks = out / "chunks"
    survived = run_until_chunks_then_sigkill(
        [sys.executable, *_cli(args, out)], _env(), chunks, "chunk-*.npz", tmp_path / "run1.log"
    )
    assert 3 <= len(survived) < N_RECORDS, "the kill must land mid-run"
    assert not (out / "embeddings.npy").exists() and not (out / "manifest.json").exists()

    rerun = subprocess.run([sys.executable, *_cli(args, out)], env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{N_RECORDS - len(survived)} left for this process" in rerun.stderr
    # chunks finished before the kill were kept, not redone
    assert {n: (chunks / n).stat().st_mtime_ns for n in survived} == survived
    _same_output(out, root / "clean")


def test_two_processes_embed_the_same_as_one(job, tmp_path):
    root, args = job
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *_cli(args, out)]
    run = subprocess.run(cmd, env=_env(), capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    assert "rank 0/2" in run.stderr and "rank 1/2" in run.stderr and "20 left for this process" in run.stderr
    assert len(list((out / "chunks").glob("chunk-*.npz"))) == N_RECORDS
    _same_output(out, root / "clean")
