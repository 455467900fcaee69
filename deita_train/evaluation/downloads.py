"""Benchmark files fetched at run time: MT-Bench questions and references, AlpacaEval reference outputs.

Neither the fschat nor the alpaca-eval wheel ships these files, and their licenses (the AlpacaEval
set is CC BY-NC) argue against vendoring them. They are downloaded once from the upstream GitHub
repositories, checked against the sha256 of the version the leaderboards were computed with, and
cached. A user can always pass a local path instead; offline with no cache, the error says how.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path


logger = logging.getLogger(__name__)

_FASTCHAT = "https://raw.githubusercontent.com/lm-sys/FastChat/main/fastchat/llm_judge/data"
_ALPACA_EVAL = "https://raw.githubusercontent.com/tatsu-lab/alpaca_eval/main/results"


@dataclass(frozen=True)
class RemoteFile:
    """One upstream file: where it lives, where it goes in the cache, and the content it must have."""

    name: str
    url: str
    sha256: str | None
    option: str  # the config key a user sets to pass a local copy instead
    license: str


REMOTE_FILES = {
    "mt_bench_questions": RemoteFile(
        "mt_bench/question.jsonl",
        f"{_FASTCHAT}/mt_bench/question.jsonl",
        "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7",
        "question_file",
        "Apache-2.0 (lm-sys/FastChat)",
    ),
    "mt_bench_reference_gpt-4": RemoteFile(
        "mt_bench/reference_answer/gpt-4.jsonl",
        f"{_FASTCHAT}/mt_bench/reference_answer/gpt-4.jsonl",
        "f957a5bc977badb66885ec970e6cd08527845780313f0995764260e5777b9b3f",
        "reference_file",
        "Apache-2.0 (lm-sys/FastChat)",
    ),
    "alpaca_eval_reference_v2": RemoteFile(
        "alpaca_eval/gpt4_1106_preview/model_outputs.json",
        f"{_ALPACA_EVAL}/gpt4_1106_preview/model_outputs.json",
        "83db546b872ddebee8965fd05fa48461ee3c32bc695c62fb57f2d214ff741ec4",
        "reference_file",
        "CC BY-NC 4.0 (tatsu-lab/alpaca_eval)",
    ),
    "alpaca_eval_reference_v1": RemoteFile(
        "alpaca_eval/text_davinci_003/model_outputs.json",
        f"{_ALPACA_EVAL}/text_davinci_003/model_outputs.json",
        "af0bc112f08c88bf589bbfe6fc1036806d0a0f6fec9c4d5a4db860f5afe73b4b",
        "reference_file",
        "CC BY-NC 4.0 (tatsu-lab/alpaca_eval)",
    ),
}


class DataUnavailableError(FileNotFoundError):
    """A benchmark file is neither given, nor cached, nor downloadable right now."""


def default_cache_dir() -> Path:
    """`$DEITA_TRAIN_CACHE`, else `$XDG_CACHE_HOME/deita_train`, else `~/.cache/deita_train`."""
    if os.environ.get("DEITA_TRAIN_CACHE"):
        return Path(os.environ["DEITA_TRAIN_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "deita_train"


def is_offline() -> bool:
    """Offline when `DEITA_TRAIN_OFFLINE` or `HF_HUB_OFFLINE` is set to a true value."""
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("DEITA_TRAIN_OFFLINE", "HF_HUB_OFFLINE")
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def fetch(key: str, cache_dir: str | Path | None = None, timeout: float = 60.0) -> Path:
    """Path of the cached copy of `REMOTE_FILES[key]`, downloading and verifying it on first use."""
    remote = REMOTE_FILES[key]
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / remote.name
    if target.is_file() and (remote.sha256 is None or _sha256(target) == remote.sha256):
        return target
    how = f"download {remote.url} yourself and pass it with --{remote.option} PATH"
    if is_offline():
        raise DataUnavailableError(
            f"{remote.name} is not in the cache ({target}) and downloads are off (HF_HUB_OFFLINE/DEITA_TRAIN_OFFLINE); {how}"
        )
    logger.info("downloading %s (%s) to %s", remote.url, remote.license, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(remote.url, timeout=timeout) as response, open(tmp, "wb") as f:
            while block := response.read(1 << 20):
                f.write(block)
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise DataUnavailableError(f"could not download {remote.name} ({e}); {how}") from e
    digest = _sha256(tmp)
    if remote.sha256 is not None and digest != remote.sha256:
        tmp.unlink(missing_ok=True)
        raise DataUnavailableError(
            f"{remote.url} has sha256 {digest}, not the {remote.sha256} that published scores were computed with; "
            f"upstream changed the file. To use it anyway, {how}"
        )
    os.replace(tmp, target)
    return target


def resolve(path: str | Path | None, key: str, cache_dir: str | Path | None = None) -> Path:
    """A user's local file when given (it must exist), else the verified cached download."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{REMOTE_FILES[key].option}={path}: no such file")
        return p
    return fetch(key, cache_dir)
