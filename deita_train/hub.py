"""Publishing checkpoints and datasets to the Hugging Face Hub, with a dry run that shows exactly what would go.

Both paths share one plan: the list of `(path in repo, source)` pairs chosen by the include and
exclude patterns below, plus the generated `README.md` card. A dry run copies exactly those files
into a folder and writes `upload_plan.json` (repo id, repo type, privacy, every file's size and
sha256) beside them; it never needs a token. A real push links the same files into a staging
folder and calls `HfApi.create_repo(exist_ok=True)` and `HfApi.upload_folder` with those files as
`allow_patterns`, after checking that the patterns select exactly the planned list.

Token handling: `resolve_token` takes an explicit token, else `HF_TOKEN` / `HUGGING_FACE_HUB_TOKEN`,
else the `hf auth login` cache. The token is passed to `HfApi` and nowhere else: it is never
logged and never written to a card, plan, config or manifest. Before anything is written or sent,
every planned text file is scanned for the token (and small metadata files for anything that looks
like a Hub token); a hit stops the publish.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, HfApi, ModelCard
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, validate_repo_id

from deita_train.jsonl import file_sha256, write_json


logger = logging.getLogger(__name__)

PLAN_FILE = "upload_plan.json"
CARD_FILE = "README.md"
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

# What a model repo gets: weights, config, tokenizer, chat template, metrics and the provenance
# manifest. Patterns are fnmatch globs on paths relative to the model folder, as `upload_folder`
# applies them (`*` also matches `/`, so subfolders are excluded explicitly below).
MODEL_ALLOW_PATTERNS = [
    "*.safetensors",  # weights, sharded or not; PEFT adapter_model.safetensors
    "*.safetensors.index.json",
    "pytorch_model*.bin",  # legacy weights (never training_args.bin, see below)
    "pytorch_model*.bin.index.json",
    "config.json",
    "generation_config.json",
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",  # SentencePiece
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "manifest.json",  # deita-train provenance (secrets already redacted by write_manifest)
    "all_results.json",
    "train_results.json",
    "eval_results.json",
]
# Never uploaded, even when an allow pattern matches.
MODEL_IGNORE_PATTERNS = [
    "checkpoint-*",  # intermediate Trainer checkpoints, with optimizer and RNG states
    "*/checkpoint-*",
    "global_step*",  # DeepSpeed ZeRO shards
    "*/global_step*",
    "optimizer.pt",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "training_args.bin",  # pickled TrainingArguments: holds hub_token when one was passed
    "runs/*",  # TensorBoard
    "wandb/*",
    "logs/*",
    ".git/*",
    ".cache/*",
    "*.tmp",
    "*.lock",
]
# What a dataset repo gets from a folder: the data files and the manifest; rejects stay home.
DATASET_ALLOW_PATTERNS = ["*.jsonl", "*.json", "*.parquet", "*.csv", "*.arrow"]
DATASET_IGNORE_PATTERNS = [
    "*reject*",  # rejected records with reasons: an audit trail, not the dataset
    "*.tmp",
    "*.lock",
    ".git/*",
    ".cache/*",
    "*/.cache/*",
]
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")

_TEXT_SUFFIXES = (".json", ".jsonl", ".md", ".txt", ".yaml", ".yml", ".jinja", ".csv", ".py", ".cfg", ".toml")
# Files small enough and free enough of user text to flag anything shaped like a Hub token.
_METADATA_SCAN_LIMIT = 16 << 20
_HUB_TOKEN_RE = re.compile(rb"hf_[A-Za-z0-9]{30,}")

Source = Path | bytes


class SecretLeakError(RuntimeError):
    """A file about to be published holds the Hub token (or something shaped like one)."""


def resolve_token(explicit: str | None = None) -> str | None:
    """The Hub token: `explicit`, else `HF_TOKEN` / `HUGGING_FACE_HUB_TOKEN`, else the login cache; None if none."""
    if explicit:
        return explicit
    for var in TOKEN_ENV_VARS:
        if os.environ.get(var):
            return os.environ[var]
    from huggingface_hub import get_token

    return get_token() or None


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedFile:
    path_in_repo: str
    size: int
    sha256: str


@dataclass(frozen=True)
class UploadPlan:
    """Everything a publish sends, and nothing else: `sources` maps each path in the repo to a file or bytes."""

    repo_id: str
    repo_type: str
    private: bool
    commit_message: str
    sources: dict[str, Source]
    ignore_patterns: list[str]

    def __post_init__(self) -> None:
        keys = list(self.sources)
        kept = set(filter_repo_objects(keys, ignore_patterns=self.ignore_patterns + DEFAULT_IGNORE_PATTERNS))
        dropped = [k for k in keys if k not in kept]
        if dropped:
            raise ValueError(
                f"{dropped}: matched by the ignore patterns, so upload_folder would skip them; rename them"
            )
        if PLAN_FILE in self.sources:
            raise ValueError(f"{PLAN_FILE} is reserved for the dry-run plan; rename that file")

    @property
    def paths(self) -> list[str]:
        return sorted(self.sources)

    @property
    def allow_patterns(self) -> list[str]:
        """The planned paths as literal globs, so `upload_folder` selects exactly them."""
        return [glob.escape(p) for p in self.paths]

    def files(self) -> list[PlannedFile]:
        out = []
        for path in self.paths:
            src = self.sources[path]
            if isinstance(src, bytes):
                out.append(PlannedFile(path, len(src), hashlib.sha256(src).hexdigest()))
            else:
                out.append(PlannedFile(path, src.stat().st_size, file_sha256(src)))
        return out

    def to_json(self) -> dict[str, Any]:
        files = self.files()
        return {
            "repo_id": self.repo_id,
            "repo_type": self.repo_type,
            "private": self.private,
            "commit_message": self.commit_message,
            "num_files": len(files),
            "total_bytes": sum(f.size for f in files),
            "files": [{"path": f.path_in_repo, "size": f.size, "sha256": f.sha256} for f in files],
            "allow_patterns": self.allow_patterns,
            "ignore_patterns": self.ignore_patterns,
        }


def _walk(root: Path, allow: Sequence[str], ignore: Sequence[str]) -> dict[str, Path]:
    """Files under `root` selected by the patterns, exactly as `upload_folder` would select them."""
    rel = {p.relative_to(root).as_posix(): p for p in sorted(root.glob("**/*")) if p.is_file()}
    return {
        k: rel[k] for k in filter_repo_objects(rel.keys(), allow_patterns=list(allow), ignore_patterns=list(ignore))
    }


def _card_bytes(card: ModelCard | DatasetCard) -> bytes:
    return str(card).encode("utf-8")


def plan_model_upload(
    model_dir: str | Path,
    repo_id: str,
    *,
    card: ModelCard,
    private: bool = False,
    commit_message: str | None = None,
) -> UploadPlan:
    """The files a model repo gets from `model_dir` (see MODEL_ALLOW/IGNORE_PATTERNS) plus the card as README.md."""
    validate_repo_id(repo_id)
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    sources: dict[str, Source] = dict(_walk(model_dir, MODEL_ALLOW_PATTERNS, MODEL_IGNORE_PATTERNS))
    if "config.json" not in sources and "adapter_config.json" not in sources:
        raise ValueError(f"{model_dir}: no config.json or adapter_config.json; is this a saved model?")
    if not any(fnmatch.fnmatch(p, "*.safetensors") or fnmatch.fnmatch(p, "pytorch_model*.bin") for p in sources):
        raise ValueError(f"{model_dir}: no weights (*.safetensors or pytorch_model*.bin) at the top level")
    if not any(p.startswith("tokenizer") for p in sources):
        logger.warning("%s: no tokenizer files; the usage snippet will not run against this repo", model_dir)
    sources[CARD_FILE] = _card_bytes(card)  # replaces any README.md the trainer wrote
    return UploadPlan(
        repo_id=repo_id,
        repo_type="model",
        private=private,
        commit_message=commit_message or f"Upload {repo_id.split('/')[-1]} with deita-train",
        sources=sources,
        ignore_patterns=list(MODEL_IGNORE_PATTERNS),
    )


def _dataset_sources(data: str | Path | Sequence[str | Path] | Mapping[str, str | Path]) -> dict[str, Path]:
    if isinstance(data, Mapping):
        return {str(k): Path(v) for k, v in data.items()}
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.is_dir():
            return _walk(path, DATASET_ALLOW_PATTERNS, DATASET_IGNORE_PATTERNS)
        if not path.is_file():
            raise FileNotFoundError(f"dataset path {path} does not exist")
        if path.name == "manifest.json":
            raise ValueError(f"{path}: a manifest alone is not a dataset")
        return {f"data/train{path.suffix}": path}
    files = [Path(p) for p in data]
    out: dict[str, Path] = {}
    data_files = [p for p in files if p.suffix in DATA_SUFFIXES and p.name != "manifest.json"]
    for p in files:
        if p.name == "manifest.json":
            key = "manifest.json"
        elif len(data_files) == 1 and p in data_files:
            key = f"data/train{p.suffix}"
        else:
            key = f"data/{p.name}"
        if key in out:
            raise ValueError(f"two files would be uploaded as {key}: {out[key]} and {p}")
        out[key] = p
    return out


def _card_data_files(card: DatasetCard) -> list[str]:
    paths: list[str] = []
    for config in card.data.to_dict().get("configs") or []:
        data_files = config.get("data_files") or []
        if isinstance(data_files, str):
            data_files = [data_files]
        for entry in data_files:
            found = entry.get("path") if isinstance(entry, Mapping) else entry
            paths += [found] if isinstance(found, str) else list(found or [])
    return paths


def plan_dataset_upload(
    data_dir_or_files: str | Path | Sequence[str | Path] | Mapping[str, str | Path],
    repo_id: str,
    *,
    card: DatasetCard,
    private: bool = False,
    commit_message: str | None = None,
) -> UploadPlan:
    """The files a dataset repo gets, plus the card as README.md.

    A folder keeps its layout (DATASET_ALLOW/IGNORE_PATTERNS); a single data file becomes
    `data/train.<ext>`; a list of files goes under `data/` (one data file: `data/train.<ext>`;
    `manifest.json` at the top); a mapping gives `{path in repo: local file}` directly. Every
    `data_files` path of the card must match a planned file, so the card never points at nothing.
    """
    validate_repo_id(repo_id)
    sources: dict[str, Source] = dict(_dataset_sources(data_dir_or_files))
    for key, src in sources.items():
        if not isinstance(src, Path) or not src.is_file():
            raise FileNotFoundError(f"{key}: source {src} is not a file")
    if not any(k.endswith(DATA_SUFFIXES) and k != "manifest.json" for k in sources):
        raise ValueError(f"{data_dir_or_files}: no data files ({', '.join(DATA_SUFFIXES)}) to publish")
    for pattern in _card_data_files(card):
        if not any(fnmatch.fnmatchcase(k, pattern) for k in sources):
            raise ValueError(
                f"the card's data_files path {pattern!r} matches none of the uploaded files {sorted(sources)}"
            )
    sources[CARD_FILE] = _card_bytes(card)
    return UploadPlan(
        repo_id=repo_id,
        repo_type="dataset",
        private=private,
        commit_message=commit_message or f"Upload {repo_id.split('/')[-1]} with deita-train",
        sources=sources,
        ignore_patterns=list(DATASET_IGNORE_PATTERNS),
    )


# ----------------------------------------------------------------------------------------------
# Secret scan
# ----------------------------------------------------------------------------------------------


def _contains(path: Path, needle: bytes, chunk: int = 1 << 20) -> bool:
    overlap = len(needle) - 1
    tail = b""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            if needle in tail + block:
                return True
            tail = block[-overlap:] if overlap else b""
    return False


def check_no_secrets(plan: UploadPlan, token: str | None) -> None:
    """Refuse to publish a plan whose text files hold `token`, or whose metadata holds anything shaped like a Hub token.

    Data files are scanned for the exact token only (conversations may legitimately quote strings
    that look like tokens); weights are not text and are not scanned.
    """
    needle = token.encode() if token else None
    for path in plan.paths:
        src = plan.sources[path]
        is_text = isinstance(src, bytes) or path.endswith(_TEXT_SUFFIXES)
        if not is_text:
            continue
        is_data = path.endswith((".jsonl", ".parquet", ".csv")) or path.startswith("data/")
        is_metadata = not is_data and not Path(path).name.startswith("tokenizer")
        if isinstance(src, bytes):
            hit = needle is not None and needle in src
            shaped = is_metadata and _HUB_TOKEN_RE.search(src) is not None
        else:
            hit = needle is not None and _contains(src, needle)
            shaped = (
                is_metadata
                and src.stat().st_size <= _METADATA_SCAN_LIMIT
                and _HUB_TOKEN_RE.search(src.read_bytes()) is not None
            )
        if hit:
            raise SecretLeakError(f"{path}: holds the Hub token; refusing to publish (redact it at the source)")
        if shaped:
            raise SecretLeakError(f"{path}: holds a string shaped like a Hub token (hf_...); refusing to publish")


# ----------------------------------------------------------------------------------------------
# Writing and sending
# ----------------------------------------------------------------------------------------------


def _materialize(plan: UploadPlan, dest: Path, link: bool) -> None:
    for path in plan.paths:
        src, target = plan.sources[path], dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            target.write_bytes(src)
        elif link:
            try:
                target.symlink_to(src.resolve())
            except OSError:
                shutil.copy2(src, target)
        else:
            shutil.copy2(src, target)


def _prepare_dry_run_dir(dest: Path, plan: UploadPlan) -> None:
    dest_r = dest.resolve()
    for src in plan.sources.values():
        if isinstance(src, Path):
            s = src.resolve()
            if dest_r == s or dest_r in s.parents:
                raise ValueError(f"dry-run folder {dest} holds the files to publish ({src}); pick an empty folder")
            if s.is_dir() and s in dest_r.parents:
                raise ValueError(f"dry-run folder {dest} is inside a published folder ({src})")
    if dest.exists() and any(dest.iterdir()):
        if not (dest / PLAN_FILE).is_file():
            raise FileExistsError(
                f"dry-run folder {dest} is not empty and holds no earlier dry run; refusing to clear it"
            )
        shutil.rmtree(dest)  # an earlier dry run: replace it, so the folder holds exactly this plan
    dest.mkdir(parents=True, exist_ok=True)


def write_dry_run(plan: UploadPlan, dry_run_dir: str | Path) -> Path:
    """Copy exactly the planned files into `dry_run_dir` and write `upload_plan.json` beside them."""
    dest = Path(dry_run_dir)
    _prepare_dry_run_dir(dest, plan)
    _materialize(plan, dest, link=False)
    write_json(dest / PLAN_FILE, plan.to_json())
    return dest


def _selected_by_patterns(folder: Path, plan: UploadPlan) -> list[str]:
    rel = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
    ignore = plan.ignore_patterns + DEFAULT_IGNORE_PATTERNS  # upload_folder adds these defaults itself
    return sorted(filter_repo_objects(rel, allow_patterns=plan.allow_patterns, ignore_patterns=ignore))


def push(plan: UploadPlan, token: str | None) -> str:
    """Create the repo (if needed) and upload exactly the planned files in one commit; returns the repo URL."""
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="deita-publish-") as staging:
        folder = Path(staging)
        _materialize(plan, folder, link=True)
        selected = _selected_by_patterns(folder, plan)
        if selected != plan.paths:
            raise RuntimeError(f"upload patterns select {selected}, not the planned {plan.paths}")
        repo_url = api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=plan.private, exist_ok=True)
        api.upload_folder(
            repo_id=plan.repo_id,
            repo_type=plan.repo_type,
            folder_path=folder,
            allow_patterns=plan.allow_patterns,
            ignore_patterns=plan.ignore_patterns,
            commit_message=plan.commit_message,
        )
    return str(repo_url)


def _publish(plan: UploadPlan, dry_run_dir: str | Path | None, token: str | None) -> str:
    resolved = resolve_token(token)
    check_no_secrets(plan, resolved)
    if dry_run_dir is not None:
        dest = write_dry_run(plan, dry_run_dir)
        logger.info(
            "dry run: %d files for %s repo %s written to %s, plan in %s (nothing uploaded)",
            len(plan.paths),
            plan.repo_type,
            plan.repo_id,
            dest,
            PLAN_FILE,
        )
        return str(dest)
    if resolved is None:
        raise RuntimeError("no Hub token: set HF_TOKEN or run `hf auth login` (or use --dry_run)")
    logger.info(
        "uploading %d files to %s repo %s (private=%s)", len(plan.paths), plan.repo_type, plan.repo_id, plan.private
    )
    url = push(plan, resolved)
    logger.info("published %s", url)
    return url


def publish_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    card: ModelCard,
    dry_run_dir: str | Path | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Push a saved model (weights, config, tokenizer) and its card; with `dry_run_dir`, write what would go there.

    Returns the repo URL, or the dry-run folder. A dry run needs no token.
    """
    plan = plan_model_upload(model_dir, repo_id, card=card, private=private, commit_message=commit_message)
    return _publish(plan, dry_run_dir, token)


def publish_dataset(
    data_dir_or_files: str | Path | Sequence[str | Path] | Mapping[str, str | Path],
    repo_id: str,
    *,
    card: DatasetCard,
    dry_run_dir: str | Path | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Push a dataset (see `plan_dataset_upload` for the layout) and its card; with `dry_run_dir`, write what would go."""
    plan = plan_dataset_upload(data_dir_or_files, repo_id, card=card, private=private, commit_message=commit_message)
    return _publish(plan, dry_run_dir, token)
