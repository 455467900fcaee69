"""The end-of-pipeline report: counts per stage, score histograms, the selection curve, loss curves, evals.

Writes PNG plots and a Markdown summary (`report.md`) that links them. Every figure is drawn from
the files the stages wrote (scored records, selection statistics, trainer logs, eval summaries),
so the report can be rebuilt at any time from a run directory.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deita_train.jsonl import iter_jsonl


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def score_histograms(scored_path: str | Path, out_png: str | Path) -> dict[str, Any]:
    """Histograms of mean complexity, mean quality and the combined Deita score over a scored pool."""
    comp, qual, combined = [], [], []
    for rec in iter_jsonl(scored_path):
        c, q = rec.get("complexity_scores") or [], rec.get("quality_scores") or []
        if c:
            comp.append(float(np.mean(c)))
        if q:
            qual.append(float(np.mean(q)))
        if c and q and len(c) == len(q):
            combined.append(float(np.sum(np.asarray(c) * np.asarray(q))))
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    for ax, values, title in zip(
        axes, (comp, qual, combined), ("complexity (mean per turn)", "quality (mean per turn)", "deita score")
    ):
        ax.hist(values, bins=20, color="#4C72B0")
        ax.set_title(f"{title}, n={len(values)}")
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return {"n_scored": len(combined), "mean_complexity": _mean(comp), "mean_quality": _mean(qual)}


def selection_curve(
    scanned: Sequence[int], kept: Sequence[int], out_png: str | Path, budgets: Sequence[int] = ()
) -> None:
    """Kept vs scanned: how many candidates the diversity rule let through as the scan went on."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(scanned, kept, label="kept")
    ax.plot(scanned, scanned, "--", color="grey", linewidth=0.8, label="kept = scanned")
    for b in budgets:
        ax.axhline(b, color="#C44E52", linewidth=0.8, linestyle=":")
    ax.set_xlabel("candidates scanned (best score first)")
    ax.set_ylabel("kept")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)


def loss_curves(trainer_states: Mapping[str, str | Path], out_png: str | Path) -> dict[str, dict[str, float]]:
    """Training loss against step for each run, read from its `trainer_state.json` log history."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    out = {}
    for name, path in trainer_states.items():
        history = json.loads(Path(path).read_text()).get("log_history", [])
        points = [(h["step"], h["loss"]) for h in history if "loss" in h]
        if not points:
            continue
        steps, losses = zip(*points)
        ax.plot(steps, losses, marker=".", label=name)
        out[name] = {"first_loss": float(losses[0]), "last_loss": float(losses[-1]), "steps": int(steps[-1])}
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out


def _mean(values: Sequence[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_report(
    out_dir: str | Path,
    stage_records: Sequence[Mapping[str, Any]],
    figures: Mapping[str, str] | None = None,
    eval_table: str | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """`report.md`: one row per stage (ran/reused, seconds, counts), then the figures and the eval table."""
    out_dir = Path(out_dir)
    lines = ["# deita-train run report", "", "| stage | status | seconds | counts |", "|---|---|---:|---|"]
    for r in stage_records:
        counts = {k: v for k, v in r["summary"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        status = "reused" if r.get("reused") else "ran"
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in counts.items())
        lines.append(f"| {r['name']} | {status} | {r['seconds']:.1f} | {shown} |")
    for title, png in (figures or {}).items():
        lines += ["", f"## {title}", "", f"![{title}]({Path(png).name})"]
    if eval_table:
        lines += ["", "## Evaluation", "", "```", eval_table.rstrip(), "```"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_report(
    out_dir: str | Path,
    stage_records: Sequence[Mapping[str, Any]],
    *,
    scored: str | Path | None = None,
    selection_stats: str | Path | None = None,
    trainer_states: Mapping[str, str | Path] | None = None,
    eval_summary: str | Path | None = None,
    eval_table: str | None = None,
    extra_figures: Mapping[str, str | Path] | None = None,
) -> dict[str, Any]:
    """Every figure the given files allow, plus `report.md`; missing files are skipped, not errors.

    `eval_summary` is an MT-Bench summary JSON (`eval/mt_bench.py show`); its table is rendered with
    the failure counts, so a partial evaluation shows as partial.
    """
    import shutil

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    summary: dict[str, Any] = {}
    if scored is not None and Path(scored).exists():
        summary |= score_histograms(scored, out_dir / "score_histograms.png")
        figures["Score histograms"] = "score_histograms.png"
    if selection_stats is not None and Path(selection_stats).exists():
        stats = json.loads(Path(selection_stats).read_text())
        curve = stats.get("kept_vs_scanned") or {}
        if curve.get("kept"):
            selection_curve(curve["scanned"], curve["kept"], out_dir / "selection_curve.png", stats.get("budgets", []))
            figures["Selection curve (kept vs scanned)"] = "selection_curve.png"
    states = {name: p for name, p in (trainer_states or {}).items() if Path(p).exists()}
    if states:
        summary["loss"] = loss_curves(states, out_dir / "loss_curves.png")
        figures["Training loss"] = "loss_curves.png"
    for title, png in (extra_figures or {}).items():
        if Path(png).exists():
            shutil.copyfile(png, out_dir / Path(png).name)
            figures[title] = Path(png).name
    if eval_table is None and eval_summary is not None and Path(eval_summary).exists():
        from deita_train.evaluation.mt_bench import format_summary

        eval_table = format_summary(json.loads(Path(eval_summary).read_text()), allow_failures=True)
    path = write_report(out_dir, stage_records, figures, eval_table)
    return summary | {"report": str(path), "figures": len(figures)}


def stage_records_of(run_dir: str | Path) -> list[dict[str, Any]]:
    """The `stage.json` records a `StageRunner` left in `run_dir`, oldest first."""
    records = [json.loads(p.read_text()) for p in Path(run_dir).glob("*/stage.json")]
    return sorted(records, key=lambda r: Path(run_dir, r["name"], "stage.json").stat().st_mtime)


def main(args: list[str] | None = None) -> dict[str, Any]:
    """`python -m deita_train.report --run_dir DIR --out DIR [--scored ...] [--trainer_state NAME=PATH ...]`."""
    import argparse

    p = argparse.ArgumentParser(description="Plots and a Markdown summary of a pipeline run.")
    p.add_argument("--run_dir", required=True, help="the pipeline's run_dir (its stage records)")
    p.add_argument("--out", required=True, help="where report.md and the PNGs go")
    p.add_argument("--scored", help="scored.jsonl of the scoring step")
    p.add_argument("--selection_stats", help="selection_stats.json of the select step")
    p.add_argument("--trainer_state", action="append", default=[], help="NAME=path/to/trainer_state.json")
    p.add_argument("--eval_summary", help="MT-Bench summary JSON written by `eval/mt_bench.py show`")
    p.add_argument("--figure", action="append", default=[], help="TITLE=path/to/existing.png to include")
    ns = p.parse_args(args)

    def pairs(items: list[str]) -> dict[str, str]:
        bad = [i for i in items if "=" not in i]
        if bad:
            p.error(f"expected NAME=PATH, got {bad}")
        return dict(i.split("=", 1) for i in items)

    result = build_report(
        ns.out,
        stage_records_of(ns.run_dir),
        scored=ns.scored,
        selection_stats=ns.selection_stats,
        trainer_states=pairs(ns.trainer_state),
        eval_summary=ns.eval_summary,
        extra_figures=pairs(ns.figure),
    )
    print(f"report: {result['report']} ({result['figures']} figures)")
    return result


if __name__ == "__main__":
    main()
