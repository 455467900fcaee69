"""Manifests: what every runnable step writes beside its output, so one file says how it was made."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib.metadata
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deita_train.jsonl import file_sha256, write_json


_SECRET_MARKERS = ("token", "api_key", "apikey", "secret", "password")
_PACKAGES = (
    "deita-train",
    "torch",
    "transformers",
    "trl",
    "accelerate",
    "deepspeed",
    "datasets",
    "peft",
    "fschat",
    "openai",
    "huggingface-hub",
    "numpy",
)


def is_secret_key(key: str) -> bool:
    k = key.lower()
    return any(m in k for m in _SECRET_MARKERS) and not k.endswith(("_env", "_tokens", "tokens", "_token_id"))


def redact(obj: Any) -> Any:
    """Replace the value of every secret-looking key (api_key, hub_token, ...) by '<redacted>'."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: ("<redacted>" if is_secret_key(str(k)) and v else redact(v)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def write_manifest(
    path: str | Path,
    *,
    step: str,
    config: Any,
    inputs: Sequence[str | Path] = (),
    outputs: Sequence[str | Path] = (),
    counts: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `manifest.json`: resolved config (secrets redacted), input hashes, counts, versions."""
    manifest = {
        "step": step,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "config": redact(config),
        "inputs": [{"path": str(p), "sha256": file_sha256(p)} for p in inputs if Path(p).exists()],
        "outputs": [str(p) for p in outputs],
        "counts": dict(counts or {}),
        "versions": package_versions(),
        "git_commit": git_commit(),
    }
    if extra:
        manifest.update(redact(dict(extra)))
    write_json(path, manifest)
    return manifest
