"""The selection step behind `data_prep/select.py`: join scores and embeddings by id, select, write, explain.

Inputs: a scored pool (`scored.jsonl`: conversations plus per-turn `complexity_scores` and
`quality_scores`) and an embeddings directory (`embedding.save_embeddings` layout). They are joined
by record id, never by row position; an id on one side only, or a duplicate id, stops the step with
an error that gives the counts and a few of the ids.

One run of `selection.select_with_stats` with the largest budget gives every output: a smaller
budget is a prefix of the larger selection (deita-6k is the first 6,000 rows of deita-10k, as in
the original). Output layout in `output_dir`::

    deita-6k/deita-6k.jsonl    records in selection order, each with `deita_score` and `deita_rank` (1-based)
    deita-6k/README.md         dataset card (YAML metadata: pools, scorers, embedder, threshold, budget, ...)
    deita-6k/manifest.json     this output's settings and counts (what `deita_train.publish dataset` reads)
    deita-10k/...
    selection_stats.json       scanned, rejected for similarity, histograms, the kept-vs-scanned curve
    selection_trace.jsonl      one line per input record: the decision and what it rested on
    rejects.jsonl              records that could not enter the selection, with the reason
    manifest.json              the step's manifest; counts satisfy in == selected + not_selected + rejected

`explain` answers "why was this id (not) selected" from `selection_trace.jsonl` alone.

With `push_to_hub: true` (repos `{hub_org}/{name}`) or `publish_dry_run: DIR` (one folder per budget,
`DIR/deita-6k/...`), each budget's folder is published with its dataset card through
`deita_train.hub` once everything is written: the data file, its manifest and the card, nothing else.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deita_train.conversations import load_conversations_with_report
from deita_train.embedding import EMBEDDINGS_FILE, IDS_FILE, load_embeddings
from deita_train.jsonl import file_sha256, iter_jsonl, write_json, write_jsonl
from deita_train.manifest import write_manifest
from deita_train.selection import SCORE_MODES, combined_scores, score_order, select_with_stats
from deita_train.sharded import fingerprint


logger = logging.getLogger(__name__)

TRACE_FILE = "selection_trace.jsonl"
STATS_FILE = "selection_stats.json"
SELECTED, REJECTED_SIMILAR, NOT_REACHED, REJECTED = "selected", "rejected_similar", "not_reached", "rejected"
_CURVE_POINTS = 1000


class JoinError(ValueError):
    """Scores and embeddings do not hold the same ids."""


@dataclass
class SelectConfig:
    """Recipe of `data_prep/select.py` (`--config recipes/select/*.yaml`)."""

    scored_path: str = field(metadata={"help": "Scored pool (scored.jsonl of data_prep/score.py)."})
    embeddings_dir: str = field(metadata={"help": "output_dir of data_prep/embed.py (embeddings.npy + ids.json)."})
    output_dir: str = field(metadata={"help": "Gets one folder per budget, stats, trace, rejects, manifest."})
    budgets: list[int] = field(default_factory=lambda: [6000, 10000], metadata={"help": "Output sizes."})
    threshold: float = field(default=0.9, metadata={"help": "Keep a row only if cosine to every kept row <= this."})
    score_mode: str = field(default="sum_product", metadata={"help": f"One of {SCORE_MODES}."})
    name_prefix: str = field(default="deita", metadata={"help": "Outputs are named {prefix}-{budget label}."})
    split: str | None = field(default=None, metadata={"help": "Split of scored_path, for a dataset."})
    allow_extra_embeddings: bool = field(
        default=False, metadata={"help": "Accept embeddings of ids that are not in the scored pool (ignored)."}
    )
    complexity_scorer: str | None = field(default=None, metadata={"help": "For the card; default: scored manifest."})
    quality_scorer: str | None = field(default=None, metadata={"help": "For the card; default: scored manifest."})
    embedder: str | None = field(default=None, metadata={"help": "For the card; default: embeddings manifest."})
    source_pools: list[str] = field(default_factory=list, metadata={"help": "Pool names or Hub ids, for the card."})
    hub_org: str | None = field(default=None, metadata={"help": "Org of the Hub ids in the cards (default 'local')."})
    license: str = field(default="mit", metadata={"help": "License in the cards."})
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "Upload each output to the Hub dataset repo {hub_org}/{name} (token: HF_TOKEN or login)."},
    )
    publish_dry_run: str | None = field(
        default=None,
        metadata={
            "help": "Write exactly what publishing would upload into DIR/{name} per output instead of uploading "
            "(no token needed); with or without push_to_hub."
        },
    )
    hub_private_repo: bool = field(default=False, metadata={"help": "Create the dataset repos private."})
    histogram_bins: int = field(default=20, metadata={"help": "Bins of the score histograms."})
    block_size: int = field(default=4096, metadata={"help": "Candidates per block in the selection."})
    device: str | None = field(default=None, metadata={"help": "Selection device (default: CUDA if available)."})
    explain: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Ids to explain (repeatable); reuses the stored selection when it is current.",
            "action": "extend",
        },
    )

    def __post_init__(self) -> None:
        if self.score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {self.score_mode!r}")
        if not self.budgets:
            raise ValueError("budgets is empty")
        if any(int(b) < 1 for b in self.budgets) or len(set(self.budgets)) != len(self.budgets):
            raise ValueError(f"budgets must be distinct positive integers, got {self.budgets}")
        self.budgets = sorted(int(b) for b in self.budgets)
        labels = [budget_label(b) for b in self.budgets]
        if len(set(labels)) != len(labels):
            raise ValueError(f"budgets {self.budgets} give clashing names {labels}")
        if self.push_to_hub and not self.hub_org:
            raise ValueError("push_to_hub: true needs hub_org (the Hub user or organisation of the dataset repos)")
        if self.push_to_hub or self.publish_dry_run:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            repo_id = f"{self.hub_org or 'local'}/{output_name(self, self.budgets[-1])}"
            try:
                validate_repo_id(repo_id)
            except HFValidationError as e:
                raise ValueError(f"hub_org / name_prefix give an invalid Hub repo id {repo_id!r}: {e}") from e


def budget_label(budget: int) -> str:
    """6000 -> '6k', 10000 -> '10k', 1500 -> '1500' (names as the released deita-6k/10k)."""
    return f"{budget // 1000}k" if budget % 1000 == 0 else str(budget)


def output_name(config: SelectConfig, budget: int) -> str:
    return f"{config.name_prefix}-{budget_label(budget)}"


# ----------------------------------------------------------------------------------------------
# Loading and joining
# ----------------------------------------------------------------------------------------------


@dataclass
class Pool:
    """The joined pool: good records in scored-file order, their scores and embedding rows, and the rejects."""

    records: list[dict[str, Any]]
    scores: np.ndarray
    rows: np.ndarray
    rejects: list[dict[str, Any]]
    n_in: int


def _examples(ids: Iterable[str], n: int = 5) -> str:
    ids = list(ids)
    return ", ".join(repr(x) for x in ids[:n]) + (", ..." if len(ids) > n else "")


def _duplicates(ids: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    dups = []
    for x in ids:
        if x in seen:
            dups.append(x)
        seen.add(x)
    return dups


def join_by_id(
    scored_ids: Sequence[str], embedding_ids: Sequence[str], *, allow_extra_embeddings: bool = False
) -> np.ndarray:
    """Embedding row of every scored id (in scored order); refuses duplicates and ids on one side only."""
    problems = []
    for what, ids in (("scored pool", scored_ids), ("embeddings", embedding_ids)):
        dups = _duplicates(ids)
        if dups:
            problems.append(f"{len(dups)} duplicate id(s) in the {what}: {_examples(dups)}")
    row_of = {x: r for r, x in enumerate(embedding_ids)}
    missing = [x for x in scored_ids if x not in row_of]
    if missing:
        problems.append(f"{len(missing)} of {len(scored_ids)} scored id(s) have no embedding: {_examples(missing)}")
    if not allow_extra_embeddings:
        scored = set(scored_ids)
        extra = [x for x in embedding_ids if x not in scored]
        if extra:
            problems.append(
                f"{len(extra)} of {len(embedding_ids)} embedded id(s) are not in the scored pool: {_examples(extra)} "
                "(embed the scored pool itself, or set allow_extra_embeddings)"
            )
    if problems:
        raise JoinError("scores and embeddings do not match by id:\n  " + "\n  ".join(problems))
    return np.asarray([row_of[x] for x in scored_ids], dtype=np.int64)


def load_pool(config: SelectConfig, embedding_ids: Sequence[str]) -> Pool:
    """Load the scored pool, set aside records that cannot be scored (with reasons), join the rest by id."""
    records, report = load_conversations_with_report(config.scored_path, config.split, strict=False)
    dup_rejects = [r for r in report.rejects if r.get("field") == "id" and "duplicate id" in str(r.get("reason"))]
    if dup_rejects:
        raise JoinError(
            f"{len(dup_rejects)} duplicate id(s) in {config.scored_path}: {_examples(r['id'] for r in dup_rejects)}"
        )
    rejects = [
        {"id": r.get("id"), "stage": "load", "reason": f"{r.get('field')}: {r.get('reason')}", "index": r.get("index")}
        for r in report.rejects
    ]
    # the join covers every valid conversation (the embed step saw the same ones), scored or not
    rows_all = join_by_id(
        [r["id"] for r in records], embedding_ids, allow_extra_embeddings=config.allow_extra_embeddings
    )
    good, scores, rows = [], [], []
    for rec, row in zip(records, rows_all):
        try:
            score = float(combined_scores([rec], mode=config.score_mode)[0])
        except ValueError as e:
            reason = str(e).split(": ", 1)[1] if str(e).startswith("record 0") else str(e)
            rejects.append({"id": rec["id"], "stage": "scores", "reason": reason})
            continue
        good.append(rec)
        scores.append(score)
        rows.append(row)
    return Pool(good, np.asarray(scores, dtype=np.float64), np.asarray(rows, dtype=np.int64), rejects, report.n_in)


# ----------------------------------------------------------------------------------------------
# Running the selection
# ----------------------------------------------------------------------------------------------


def _default_scorers(config: SelectConfig) -> dict[str, str]:
    """Scorer ids from the config, else from the scoring step's manifest beside the scored pool."""
    found: dict[str, str] = {}
    manifest_path = Path(config.scored_path).parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for kind in ("complexity", "quality"):
        value = getattr(config, f"{kind}_scorer")
        if value is None:
            value = ((manifest.get("scorer") or {}).get(kind) or {}).get("model")
        if value is None:
            value = (manifest.get("config") or {}).get(f"{kind}_model")
        if value:
            found[kind] = str(value)
    return found


def _embeddings_manifest(config: SelectConfig) -> dict[str, Any]:
    path = Path(config.embeddings_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def input_hashes(config: SelectConfig) -> list[dict[str, str | None]]:
    """Path and content hash of each input (scored pool, embeddings, their ids), computed once per run."""
    emb = Path(config.embeddings_dir)
    paths = [Path(config.scored_path), emb / EMBEDDINGS_FILE, emb / IDS_FILE]
    return [{"path": str(p), "sha256": file_sha256(p) if p.exists() else None} for p in paths]


def selection_fingerprint(config: SelectConfig, hashes: list[dict[str, str | None]] | None = None) -> str:
    """What decides the selection: input contents and the rule's settings (not names or card fields)."""
    hashes = input_hashes(config) if hashes is None else hashes
    return fingerprint(
        "select-v1",
        [h["sha256"] or h["path"] for h in hashes],
        config.split,
        config.budgets,
        config.threshold,
        config.score_mode,
        config.allow_extra_embeddings,
    )


def _curve(positions: np.ndarray) -> dict[str, list[int]]:
    """Kept count against candidates scanned (x = scanned, y = kept), at most ~1000 points."""
    n = len(positions)
    if n == 0:
        return {"scanned": [], "kept": []}
    take = np.unique(np.linspace(0, n - 1, min(n, _CURVE_POINTS)).round().astype(np.int64))
    return {"scanned": [int(positions[i]) for i in take], "kept": [int(i) + 1 for i in take]}


def _histogram(pool_scores: np.ndarray, selected_scores: np.ndarray, bins: int) -> dict[str, Any] | None:
    from deita_train.cards import score_histogram

    return score_histogram(pool_scores, selected_scores, bins=bins) if pool_scores.size else None


def _card(
    config: SelectConfig,
    *,
    name: str,
    budget: int,
    counts: dict[str, Any],
    histogram: dict[str, Any],
    scorers: dict[str, str],
    embedder: str,
    settings: dict[str, Any],
    source_pools: list[str],
) -> str:
    from deita_train.cards import build_dataset_card

    card = build_dataset_card(
        repo_id=f"{config.hub_org or 'local'}/{name}",
        pretty_name=name,
        source_pools=source_pools,
        scorer_ids=scorers,
        embedder_id=embedder,
        threshold=config.threshold,
        budget=budget,
        counts=counts,
        score_histogram=histogram,
        score_mode=config.score_mode,
        config=settings,
        license=config.license,
        data_files=f"{name}.jsonl",
    )
    return str(card)


# Settings that say where outputs go, not how they were selected: kept out of the cards and per-output manifests.
_PUBLISH_KEYS = ("push_to_hub", "publish_dry_run", "hub_private_repo")


def _check_publishing(config: SelectConfig) -> None:
    """Fail before selecting when the outputs cannot be published as asked."""
    if config.publish_dry_run:
        out, dest = Path(config.output_dir).resolve(), Path(config.publish_dry_run).resolve()
        if dest == out or out in dest.parents:
            raise ValueError(
                f"publish_dry_run {config.publish_dry_run} is inside output_dir {config.output_dir}; "
                "pick a folder outside it"
            )
    elif config.push_to_hub:
        from deita_train.hub import resolve_token

        if resolve_token() is None:
            raise RuntimeError(
                "push_to_hub: true but no Hub token: set HF_TOKEN or run `hf auth login` "
                "(or set publish_dry_run: DIR to see what would be uploaded)"
            )


def publish_outputs(config: SelectConfig) -> dict[str, str]:
    """Publish each budget's folder (data, manifest, its card) to `{hub_org}/{name}`, or dry-run it into DIR/{name}.

    Returns `{name: repo URL or dry-run folder}`; empty when neither push_to_hub nor publish_dry_run is set.
    """
    from huggingface_hub import DatasetCard

    from deita_train.hub import publish_dataset

    if not (config.push_to_hub or config.publish_dry_run):
        return {}
    published = {}
    for budget in config.budgets:
        name = output_name(config, budget)
        folder = Path(config.output_dir) / name
        card = DatasetCard((folder / "README.md").read_text(encoding="utf-8"))
        published[name] = publish_dataset(
            folder,
            f"{config.hub_org or 'local'}/{name}",
            card=card,
            dry_run_dir=Path(config.publish_dry_run) / name if config.publish_dry_run else None,
            private=config.hub_private_repo,
        )
    return published


def run_selection(config: SelectConfig) -> dict[str, Any]:
    """Select from the scored pool into `config.output_dir` (see the module docstring); returns the counts.

    When publishing is asked for, the outputs are published last, and the counts carry `published`:
    `{name: repo URL or dry-run folder}`.
    """
    out_dir = Path(config.output_dir)
    _check_publishing(config)
    scorers = _default_scorers(config)
    needed = [k for k in ("complexity", "quality") if config.score_mode in ("sum_product", "mean_product", k)]
    if [k for k in needed if k not in scorers]:
        raise ValueError(
            f"the dataset cards must name the {' and '.join(needed)} scorer(s), and no manifest.json beside "
            f"{config.scored_path} names them: set {', '.join(f'{k}_scorer' for k in needed)} in the recipe"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    emb_ids, matrix = load_embeddings(config.embeddings_dir)
    pool = load_pool(config, emb_ids)
    emb_manifest = _embeddings_manifest(config)
    hashes = input_hashes(config)  # hashed once: the embeddings file can be gigabytes
    scored_sha = hashes[0]["sha256"]
    if emb_manifest.get("inputs") and scored_sha and emb_manifest["inputs"][0].get("sha256") != scored_sha:
        logger.warning(
            "the embeddings were computed from %s, not from %s (different content); they are joined by id",
            emb_manifest["inputs"][0].get("path"),
            config.scored_path,
        )
    n_good = len(pool.records)
    contiguous = n_good == matrix.shape[0] and np.array_equal(pool.rows, np.arange(n_good))
    embeddings = matrix if contiguous else np.asarray(matrix[pool.rows])
    largest = config.budgets[-1]
    logger.info(
        "selecting up to %d of %d scored records (threshold %s, score %s)",
        largest,
        n_good,
        config.threshold,
        config.score_mode,
    )
    stats = select_with_stats(
        pool.scores, embeddings, largest, config.threshold, block_size=config.block_size, device=config.device
    )
    selected = stats.indices
    order = score_order(pool.scores) if n_good else np.empty(0, dtype=np.int64)
    score_rank = np.empty(n_good, dtype=np.int64)
    score_rank[order] = np.arange(1, n_good + 1)
    kept_positions = np.flatnonzero(stats.kept) + 1  # scan position (1-based) at which each kept row was found
    ids = [r["id"] for r in pool.records]

    embedder = config.embedder or (emb_manifest.get("embedder") or {}).get("model") or str(config.embeddings_dir)
    n_rejected = len(pool.rejects)
    # the card names the pools: from the recipe, else the `source` field that build_pool.py writes
    source_pools = list(config.source_pools) or sorted({str(r["source"]) for r in pool.records if r.get("source")})
    outputs: dict[str, dict[str, Any]] = {}
    for budget in config.budgets:
        name = output_name(config, budget)
        n = min(budget, len(selected))
        if n < budget:
            logger.warning("%s: the pool ran out after %d of %d rows (every candidate was scanned)", name, n, budget)
        scanned_b = int(kept_positions[n - 1]) if n else 0
        rows = [
            {**pool.records[i], "deita_score": float(pool.scores[i]), "deita_rank": rank}
            for rank, i in enumerate(selected[:n].tolist(), start=1)
        ]
        folder = out_dir / name
        write_jsonl(folder / f"{name}.jsonl", rows)
        histogram = _histogram(pool.scores, pool.scores[selected[:n]], config.histogram_bins)
        counts = {
            "pool": pool.n_in,
            "rejected": n_rejected,
            "scored": n_good,
            "scanned": scanned_b,
            "rejected_similar": scanned_b - n,
            "selected": n,
        }
        settings = {
            **{
                k: v
                for k, v in asdict(config).items()
                if k not in ("budgets", "explain", "output_dir", *_PUBLISH_KEYS)
            },
            "budget": budget,
            "complexity_scorer": scorers.get("complexity"),
            "quality_scorer": scorers.get("quality"),
            "embedder": embedder,
            "source_pools": source_pools,
        }
        (folder / "README.md").write_text(
            _card(
                config,
                name=name,
                budget=budget,
                counts=counts,
                histogram=histogram,
                scorers=scorers,
                embedder=embedder,
                settings=settings,
                source_pools=source_pools,
            ),
            encoding="utf-8",
        )
        write_manifest(
            folder / "manifest.json",
            step="select",
            config=settings,
            outputs=[folder / f"{name}.jsonl", folder / "README.md"],
            counts=counts,
            extra={"inputs": hashes},
        )
        outputs[name] = {"budget": budget, "counts": counts, "score_histogram": histogram}

    # the trace: every input record, best score first, then the rejects
    status = np.full(n_good, NOT_REACHED, dtype=object)
    deita_rank = np.zeros(n_good, dtype=np.int64)
    deita_rank[selected] = np.arange(1, len(selected) + 1)
    status[stats.candidates] = np.where(stats.kept, SELECTED, REJECTED_SIMILAR)
    trace: list[dict[str, Any]] = []
    for pos, (row, sim, near) in enumerate(
        zip(stats.candidates.tolist(), stats.max_sim_at_decision.tolist(), stats.nearest_kept.tolist()), start=1
    ):
        entry = {
            "id": ids[row],
            "status": status[row],
            "score": float(pool.scores[row]),
            "score_rank": int(score_rank[row]),
            "scan_position": pos,
            "max_sim": None if near < 0 else float(sim),
            "nearest_kept_id": None if near < 0 else ids[near],
            "nearest_kept_rank": None if near < 0 else int(deita_rank[near]),
        }
        if status[row] == SELECTED:
            r = int(deita_rank[row])
            entry["deita_rank"] = r
            entry["outputs"] = [output_name(config, b) for b in config.budgets if r <= b]
        trace.append(entry)
    for row in order[stats.scanned :].tolist():
        trace.append(
            {
                "id": ids[row],
                "status": NOT_REACHED,
                "score": float(pool.scores[row]),
                "score_rank": int(score_rank[row]),
            }
        )
    for rej in pool.rejects:
        trace.append({"id": rej["id"], "status": REJECTED, "stage": rej["stage"], "reason": rej["reason"]})
    write_jsonl(out_dir / TRACE_FILE, trace)
    write_jsonl(out_dir / "rejects.jsonl", pool.rejects)

    counts = {
        "in": pool.n_in,
        "selected": int(len(selected)),
        "not_selected": int(n_good - len(selected)),
        "rejected": n_rejected,
        "scanned": int(stats.scanned),
        "rejected_similar": int(stats.rejected_similar),
        "not_reached": int(n_good - stats.scanned),
        "outputs": {name: o["counts"]["selected"] for name, o in outputs.items()},
    }
    assert counts["in"] == counts["selected"] + counts["not_selected"] + counts["rejected"]
    assert counts["not_selected"] == counts["rejected_similar"] + counts["not_reached"]
    write_json(
        out_dir / STATS_FILE,
        {
            "threshold": config.threshold,
            "score_mode": config.score_mode,
            "budgets": config.budgets,
            "counts": counts,
            "outputs": outputs,
            "pool_score_histogram": _histogram(pool.scores, pool.scores[selected], config.histogram_bins),
            "kept_vs_scanned": _curve(kept_positions),
        },
    )
    write_manifest(
        out_dir / "manifest.json",
        step="select",
        config=asdict(config),
        outputs=[out_dir / output_name(config, b) for b in config.budgets]
        + [out_dir / STATS_FILE, out_dir / TRACE_FILE, out_dir / "rejects.jsonl"],
        counts=counts,
        extra={
            "inputs": hashes,
            "fingerprint": selection_fingerprint(config, hashes),
            "scorers": scorers,
            "embedder": embedder,
            "embeddings_manifest": {k: emb_manifest.get(k) for k in ("fingerprint", "embedder", "counts")},
        },
    )
    logger.info(
        "selected %d of %d scored records: scanned %d, rejected %d for similarity (> %s), %d never reached; "
        "%d rejected before selection; outputs %s",
        counts["selected"],
        n_good,
        counts["scanned"],
        counts["rejected_similar"],
        config.threshold,
        counts["not_reached"],
        n_rejected,
        counts["outputs"],
    )
    published = publish_outputs(config)
    if published:
        counts["published"] = published
    return counts


# ----------------------------------------------------------------------------------------------
# Explaining
# ----------------------------------------------------------------------------------------------


def stored_selection_is_current(config: SelectConfig) -> bool:
    """True when `output_dir` holds a finished selection of these inputs with these settings."""
    out_dir = Path(config.output_dir)
    manifest_path = out_dir / "manifest.json"
    if not (manifest_path.is_file() and (out_dir / TRACE_FILE).is_file()):
        return False
    stored = json.loads(manifest_path.read_text())
    return stored.get("step") == "select" and stored.get("fingerprint") == selection_fingerprint(config)


def _message(entry: dict[str, Any] | None, record_id: str, meta: dict[str, Any]) -> str:
    thr = meta.get("threshold")
    if entry is None:
        return (
            f"{record_id}: not in the scored pool of this selection (no such id among {meta['counts']['in']} records)"
        )
    status = entry["status"]
    if status == REJECTED:
        return f"{record_id}: rejected before selection ({entry['stage']}): {entry['reason']}"
    n_scored = meta["counts"]["in"] - meta["counts"]["rejected"]
    head = f"{record_id}: score {entry['score']:.4f}, rank {entry['score_rank']} of {n_scored} in score order"
    if status == NOT_REACHED:
        largest = max(meta["budgets"])
        return (
            f"{head}; not selected: never examined, the largest budget ({largest}) filled after "
            f"{meta['counts']['scanned']} candidates"
        )
    pos = entry["scan_position"]
    if status == SELECTED:
        if entry["max_sim"] is None:
            why = "the first candidate is always kept"
        else:
            why = (
                f"max cosine similarity to the rows kept before it {entry['max_sim']:.6f} <= threshold {thr} "
                f"(nearest: {entry['nearest_kept_id']}, deita rank {entry['nearest_kept_rank']})"
            )
        return (
            f"{head}; selected at deita rank {entry['deita_rank']} (candidate {pos} scanned; in "
            f"{', '.join(entry['outputs'])}): {why}"
        )
    return (
        f"{head}; not selected: candidate {pos} scanned, rejected for similarity: cosine {entry['max_sim']:.6f} > "
        f"threshold {thr} to kept {entry['nearest_kept_id']} (deita rank {entry['nearest_kept_rank']})"
    )


def explain_many(output_dir: str | Path, record_ids: Sequence[str]) -> list[dict[str, Any]]:
    """For each id: its trace entry (status, score, ranks, similarity, nearest kept id) plus a `message`."""
    out_dir = Path(output_dir)
    if not (out_dir / TRACE_FILE).is_file():
        raise FileNotFoundError(f"{out_dir / TRACE_FILE} not found: run the selection into {out_dir} first")
    meta = json.loads((out_dir / STATS_FILE).read_text())
    wanted = set(record_ids)
    found = {e["id"]: e for e in iter_jsonl(out_dir / TRACE_FILE) if e.get("id") in wanted}
    results = []
    for rid in record_ids:
        entry = found.get(rid)
        results.append({**(entry or {"id": rid, "status": "unknown"}), "message": _message(entry, rid, meta)})
    return results


def explain(output_dir: str | Path, record_id: str) -> dict[str, Any]:
    """Why `record_id` was or was not selected, from the stored trace (no recomputation)."""
    return explain_many(output_dir, [record_id])[0]


def main(args: Sequence[str] | None = None) -> dict[str, Any]:
    """`data_prep/select.py`: parse the recipe, select (unless only explaining a current selection), explain."""
    from deita_train.config import parse_config, setup_logging

    setup_logging()
    (config,) = parse_config(SelectConfig, args=args)
    result: dict[str, Any] = {}
    if config.explain and stored_selection_is_current(config):
        logger.info("explaining from the stored selection in %s (inputs and settings unchanged)", config.output_dir)
    else:
        result["counts"] = run_selection(config)
    if config.explain:
        result["explanations"] = explain_many(config.output_dir, config.explain)
        for item in result["explanations"]:
            print(item["message"], flush=True)
    return result
