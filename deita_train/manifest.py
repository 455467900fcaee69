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


_SPECIAL_TOKEN_KEYS = ("bos", "eos", "pad", "unk", "sep", "cls", "mask")


def is_secret_key(key: str) -> bool:
    """api_key, hub_token, password, ... but not max_tokens, eos_token or api_key_env (names, not secrets)."""
    words = key.lower().replace("-", "_").split("_")
    if words[-1] in ("env", "id", "ids") or words[0] in _SPECIAL_TOKEN_KEYS:
        return False
    joined = "_".join(words)
    return "token" in words or "api_key" in joined or "apikey" in words or "secret" in words or "password" in words


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line with the values of secret-looking flags (`--hub_token X`, `--api_key=X`) replaced."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append("<redacted>")
            hide_next = False
            continue
        if arg.startswith("--") and is_secret_key(arg[2:].split("=", 1)[0]):
            if "=" in arg:
                arg = arg.split("=", 1)[0] + "=<redacted>"
            else:
                hide_next = True
        out.append(arg)
    return out


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
        "command": redact_argv([Path(sys.argv[0]).name, *sys.argv[1:]]),
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
