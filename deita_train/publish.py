"""Publish a trained model or a selected dataset to the Hub, or dry-run it into a folder.

    python -m deita_train.publish model --path runs/sft --repo_id ORG/NAME --recipe recipes/.../sft.yaml \\
        [--kind sft|dpo|scorer] [--base_model ID] [--datasets ID ...] [--eval_results PATH ...] [--dry_run OUT] [--private]
    python -m deita_train.publish dataset --path runs/select --repo_id ORG/deita-6k [--pool scored.jsonl] [--dry_run OUT]

Also `--config publish.yaml` (TRL's parser: YAML defaults, command-line overrides, unknown keys
rejected). There is no `--token` flag on purpose: a token on a command line ends up in shell
history, process lists and manifests. The token comes from `HF_TOKEN` or `hf auth login`; a dry
run needs none. What is not given on the command line is read from the recipe and from the
`manifest.json` the training or selection step wrote beside its output. The training and selection
steps publish through the same functions (`publish_trained_model`, `hub.publish_dataset`) when
their recipe sets `push_to_hub` or `publish_dry_run`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deita_train.cards import (
    build_dataset_card,
    build_model_card,
    hyperparameters_from_recipe,
    load_eval_results,
    load_recipe,
    score_histogram,
)
from deita_train.config import parse_config, setup_logging
from deita_train.hub import publish_dataset, publish_model
from deita_train.jsonl import iter_jsonl


logger = logging.getLogger(__name__)

COMMANDS = ("model", "dataset")
# Recipe keys that name the training data (TRL/alignment-handbook style and this project's).
_DATASET_KEYS = ("dataset_name", "dataset_path", "data_path", "train_file", "datasets", "dataset_mixture")


@dataclass
class ModelPublishConfig:
    """Publish a saved model folder (SFT, DPO or scorer) with its card."""

    path: str = field(metadata={"help": "the saved model folder (output_dir of the training step)"})
    repo_id: str = field(metadata={"help": "the Hub repo, ORG/NAME"})
    kind: str | None = field(default=None, metadata={"help": "sft, dpo or scorer (default: from the manifest step)"})
    base_model: str | None = field(default=None, metadata={"help": "default: the recipe's model_name_or_path"})
    datasets: list[str] | None = field(default=None, metadata={"help": "Hub ids or paths (default: from the recipe)"})
    recipe: str | None = field(
        default=None,
        metadata={"help": "the training recipe YAML, inlined (redacted); default: the --config the manifest recorded"},
    )
    eval_results: list[str] | None = field(default=None, metadata={"help": "evaluation result JSON files"})
    eval_model: str | None = field(default=None, metadata={"help": "model name inside a multi-model MT-Bench summary"})
    scorer_type: str | None = field(default=None, metadata={"help": "complexity or quality (kind scorer)"})
    license: str = "apache-2.0"
    notes: str | None = field(default=None, metadata={"help": "extra notes for the card"})
    dry_run: str | None = field(default=None, metadata={"help": "write what would be uploaded into this folder"})
    private: bool = False
    commit_message: str | None = None


@dataclass
class DatasetPublishConfig:
    """Publish a selection output (deita-6k/10k style) with its card."""

    path: str = field(metadata={"help": "the selection output folder, or the selected JSONL"})
    repo_id: str = field(metadata={"help": "the Hub dataset repo, ORG/NAME"})
    data_file: str | None = field(default=None, metadata={"help": "the selected JSONL inside --path"})
    pretty_name: str | None = None
    pool: str | None = field(default=None, metadata={"help": "the scored pool JSONL, for the score histogram"})
    source_pools: list[str] | None = None
    complexity_scorer: str | None = None
    quality_scorer: str | None = None
    embedder: str | None = None
    threshold: float | None = None
    budget: int | None = None
    score_mode: str | None = None
    bins: int = 10
    license: str = "mit"
    dry_run: str | None = field(default=None, metadata={"help": "write what would be uploaded into this folder"})
    private: bool = False
    commit_message: str | None = None


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):  # a mixture {id: weight} or a list of {path|name: ...}
        return [str(k) for k in value]
    out = []
    for v in value:
        if isinstance(v, Mapping):
            out += [str(v[k]) for k in ("id", "path", "name", "dataset_name") if k in v][:1]
        else:
            out.append(str(v))
    return out


def _flat_settings(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A training manifest's config as one mapping: its `model`, `script` and `training` parts merged."""
    config = dict(manifest.get("config") or {})
    parts = [config.pop(k) for k in ("model", "script", "training") if isinstance(config.get(k), Mapping)]
    out = dict(config)
    for part in parts:
        out.update(part)
    return out


def _infer_kind(manifest: Mapping[str, Any]) -> str:
    step = str(manifest.get("step", "")).lower()
    return "dpo" if "dpo" in step else "scorer" if "scorer" in step else "sft"


def recipe_from_command(command: Sequence[str] | None) -> str | None:
    """The `--config` recipe of a recorded command line (a manifest's `command`), if that file is still there."""
    args = [str(a) for a in command or []]
    if "--config" in args and args.index("--config") + 1 < len(args):
        path = args[args.index("--config") + 1]
    else:
        path = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
    if path and not Path(path).is_file():
        logger.warning("the recorded recipe %s is not there any more; the card will not inline it", path)
        return None
    return path


def publish_trained_model(
    model_dir: str | Path,
    repo_id: str,
    *,
    recipe_path: str | Path | None = None,
    kind: str | None = None,
    base_model: str | None = None,
    datasets: Sequence[str] | None = None,
    eval_results: Sequence[str | Path] | None = None,
    eval_model: str | None = None,
    scorer_type: str | None = None,
    license: str = "apache-2.0",
    notes: str | None = None,
    dry_run_dir: str | Path | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Card a trained output folder from its `manifest.json` (and recipe) and publish it; returns the URL or dry-run folder.

    The one path from a training output to the Hub: `python -m deita_train.publish model` and the
    training entry points (`push_to_hub` / `publish_dry_run`) both come here. Without `recipe_path`,
    the recipe is the `--config` of the command the manifest recorded. `token` defaults to
    `hub.resolve_token()` (HF_TOKEN or the login cache) and goes to `HfApi` only.
    """
    model_dir = Path(model_dir)
    manifest = _read_manifest(model_dir)
    if recipe_path is None:
        recipe_path = recipe_from_command(manifest.get("command"))
    # the manifest holds the values the run used (recipe + overrides + defaults); the recipe fills gaps
    settings: dict[str, Any] = {**(load_recipe(recipe_path) if recipe_path else {}), **_flat_settings(manifest)}
    base_model = base_model or settings.get("model_name_or_path")
    if not base_model:
        raise ValueError("no base model: pass --base_model or a --recipe with model_name_or_path")
    if datasets is None:
        datasets = next((_as_list(settings[k]) for k in _DATASET_KEYS if settings.get(k)), [])
    card = build_model_card(
        model_dir,
        repo_id=repo_id,
        kind=kind or _infer_kind(manifest),
        base_model=str(base_model),
        datasets=datasets,
        recipe_path=recipe_path,
        hyperparameters=hyperparameters_from_recipe(settings),
        eval_results=load_eval_results(eval_results, model=eval_model) if eval_results else None,
        license=license,
        extra_notes=notes,
        scorer_type=scorer_type,
    )
    return publish_model(
        model_dir,
        repo_id,
        card=card,
        dry_run_dir=dry_run_dir,
        private=private,
        token=token,
        commit_message=commit_message,
    )


def publish_model_command(cfg: ModelPublishConfig) -> str:
    return publish_trained_model(
        cfg.path,
        cfg.repo_id,
        recipe_path=cfg.recipe,
        kind=cfg.kind,
        base_model=cfg.base_model,
        datasets=cfg.datasets,
        eval_results=cfg.eval_results,
        eval_model=cfg.eval_model,
        scorer_type=cfg.scorer_type,
        license=cfg.license,
        notes=cfg.notes,
        dry_run_dir=cfg.dry_run,
        private=cfg.private,
        commit_message=cfg.commit_message,
    )


def _find_data_file(folder: Path, name: str | None) -> Path:
    if name is not None:
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    candidates = [p for p in sorted(folder.glob("*.jsonl")) if "reject" not in p.name]
    if len(candidates) != 1:
        raise ValueError(f"{folder}: found {[p.name for p in candidates]} JSONL files; say which with --data_file")
    return candidates[0]


def _selection_histogram(folder: Path) -> dict[str, Any] | None:
    """The pool/selected histogram the select step recorded for this output folder, if it is one of its outputs."""
    from deita_train.select_step import STATS_FILE

    stats = folder.parent / STATS_FILE
    if not stats.is_file():
        return None
    output = (json.loads(stats.read_text(encoding="utf-8")).get("outputs") or {}).get(folder.name) or {}
    return output.get("score_histogram")


def publish_dataset_command(cfg: DatasetPublishConfig) -> str:
    path = Path(cfg.path)
    folder = path if path.is_dir() else path.parent
    data_file = _find_data_file(path, cfg.data_file) if path.is_dir() else path
    manifest = _read_manifest(folder)
    settings: dict[str, Any] = dict(manifest.get("config") or {})

    def pick(name: str, value: Any) -> Any:
        if value is not None:
            return value
        if settings.get(name) is not None:
            return settings[name]
        raise ValueError(f"{name} is not given and not in {folder / 'manifest.json'}; pass --{name}")

    score_mode = cfg.score_mode or settings.get("score_mode") or "sum_product"
    scorer_ids = {}
    for kind in ("complexity", "quality"):
        value = getattr(cfg, f"{kind}_scorer") or settings.get(f"{kind}_scorer")
        if value:
            scorer_ids[kind] = str(value)
    selected_scores, n_selected = [], 0
    for n_selected, rec in enumerate(iter_jsonl(data_file), start=1):
        if "deita_score" not in rec:
            raise ValueError(
                f"{data_file}: record {n_selected} ({rec.get('id')!r}) has no deita_score; is it selected?"
            )
        selected_scores.append(float(rec["deita_score"]))
    counts = dict(manifest.get("counts") or {})
    counts.setdefault("selected", n_selected)
    if counts["selected"] != n_selected:
        raise ValueError(
            f"{data_file} holds {n_selected} records but the manifest counts {counts['selected']} selected"
        )
    histogram = _selection_histogram(folder)
    if cfg.pool is not None:
        from deita_train.selection import combined_scores

        histogram = score_histogram(combined_scores(iter_jsonl(cfg.pool), mode=score_mode), selected_scores, cfg.bins)
    elif histogram is None and selected_scores:
        histogram = score_histogram(selected_scores, selected_scores, cfg.bins)
        histogram.pop("pool")  # no pool scores at hand: show the selected ones only
    card = build_dataset_card(
        repo_id=cfg.repo_id,
        pretty_name=cfg.pretty_name or cfg.repo_id.split("/")[-1],
        source_pools=cfg.source_pools if cfg.source_pools is not None else _as_list(settings.get("source_pools")),
        scorer_ids=scorer_ids,
        embedder_id=str(pick("embedder", cfg.embedder)),
        threshold=float(pick("threshold", cfg.threshold)),
        budget=int(pick("budget", cfg.budget)),
        counts=counts,
        score_histogram=histogram,
        score_mode=score_mode,
        config=settings or None,
        license=cfg.license,
    )
    files: dict[str, Path] = {"data/train.jsonl": data_file}
    if (folder / "manifest.json").is_file():
        files["manifest.json"] = folder / "manifest.json"
    return publish_dataset(
        files,
        cfg.repo_id,
        card=card,
        dry_run_dir=cfg.dry_run,
        private=cfg.private,
        commit_message=cfg.commit_message,
    )


def main(args: Sequence[str] | None = None) -> str:
    """Run `model` or `dataset` publishing; returns the repo URL or the dry-run folder. Callable in-process."""
    argv = list(sys.argv[1:] if args is None else args)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        raise SystemExit(
            f"usage: python -m deita_train.publish {{{'|'.join(COMMANDS)}}} --path DIR --repo_id ORG/NAME ..."
        )
    setup_logging()
    command, rest = argv[0], argv[1:]
    if command == "model":
        (cfg,) = parse_config(ModelPublishConfig, args=rest)
        result = publish_model_command(cfg)
    else:
        (cfg,) = parse_config(DatasetPublishConfig, args=rest)
        result = publish_dataset_command(cfg)
    print(result)
    return result


if __name__ == "__main__":
    main()
