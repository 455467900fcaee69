"""Shared fixtures: offline everywhere, the real reference data when present, one tiny checkpoint per session."""

import os
from pathlib import Path

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")


def shared_data_dir() -> Path:
    """../shared/data beside the checkout (or $DEITA_SHARED_DATA); a user's clone may not have it."""
    env = os.environ.get("DEITA_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"reference data not present at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory) -> Path:
    from deita_train.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "mistral", arch="mistral")


@pytest.fixture(scope="session")
def mistral_tokenizer(tiny_mistral):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_mistral)


def write_random_pool(
    path: Path,
    n_records: int = 40,
    *,
    max_reply_words: int = 200,
    trailing_question_every: int = 7,
    broken_at: int = 5,
    broken_value: str = "",
    index_key: bool = False,
) -> None:
    """A seeded pool of multi-turn conversations of varied length for the sharded-job tests.

    Some end with an unanswered question; one record (at `broken_at`) is invalid, so loading must
    reject it and the counts must still add up.
    """
    import random

    from deita_train.jsonl import write_jsonl

    rng = random.Random(0)
    words = "the cat sat on a mat while quantum fields shimmer 42 times over naive data code def return".split()

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    rows = []
    for i in range(n_records):
        conv = []
        for _ in range(rng.randint(1, 3)):
            conv += [
                {"from": "human", "value": text(rng.randint(5, 80))},
                {"from": "gpt", "value": text(rng.randint(20, max_reply_words))},
            ]
        if i % trailing_question_every == 0:
            conv.append({"from": "human", "value": text(10)})  # a trailing question without an answer
        rows.append({"id": f"rec-{i:03d}", "conversations": conv, **({"n": i} if index_key else {})})
    rows.insert(broken_at, {"id": "broken", "conversations": [{"from": "human", "value": broken_value}]})
    write_jsonl(path, rows)


def run_until_chunks_then_sigkill(
    cmd: list[str], env: dict, chunks: Path, pattern: str, log: Path, n: int = 3
) -> dict:
    """Start `cmd`, SIGKILL it once `n` chunk files matching `pattern` exist in `chunks`, and return the
    finished chunks as {name: mtime_ns} (for checking that a rerun keeps them untouched)."""
    import os
    import signal
    import subprocess
    import time

    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if chunks.is_dir() and len(list(chunks.glob(pattern))) >= n:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    return {p.name: p.stat().st_mtime_ns for p in chunks.glob(pattern)}
