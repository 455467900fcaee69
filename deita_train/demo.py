"""`make demo`: the whole pipeline on the embedded default (tiny models, the project's demo pool), on CPU.

pool -> EVOL data -> scorers -> scores -> embeddings -> selection -> SFT -> DPO -> MT-Bench -> publish
(dry run) -> report. Each stage runs the tiny recipe of its step (`recipes/*/tiny*.yaml`) with its
paths pointed into ``output_dir``, through the same functions the runnable steps call. Stages are
cached (`deita_train.stages`): a second run reuses every stage whose inputs and config did not change.
The documented equivalent for real runs is `python -m deita_train.pipeline --config
recipes/pipeline/deita-7b-v1.0.yaml` (README, "Reproducing deita-6k/10k and DEITA-7B-v1.0 on GPUs").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deita_train.config import parse_config, setup_logging
from deita_train.stages import Stage, StageRunner


logger = logging.getLogger("deita_train.demo")
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# The demo's stages are cached as a whole, so mid-run checkpoints only cost time (resume is tested on its own).
NO_CHECKPOINTS = ("--save_strategy", "no")


@dataclass
class DemoConfig:
    output_dir: str = field(default="runs/demo", metadata={"help": "Where every stage writes its outputs."})
    force: bool = field(default=False, metadata={"help": "Redo every stage even if nothing changed."})
    max_length: int = field(default=256, metadata={"help": "Token budget per sample for the tiny runs."})
    budgets: list[int] = field(default_factory=lambda: [20, 40], metadata={"help": "Selection sizes (demo)."})
    mt_bench_questions: int = field(default=4, metadata={"help": "Demo MT-Bench questions to answer and judge."})


def recipe(*parts: str) -> str:
    path = RECIPES.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} not found: the demo runs the repository's tiny recipes")
    return str(path)


def stage_pool(out: Path) -> dict[str, Any]:
    """Write the demo pool (with a few broken records) and load it leniently: kept + rejected = in."""
    from deita_train.conversations import load_conversations_with_report
    from deita_train.demo_pool import write_demo_pool
    from deita_train.jsonl import write_jsonl

    raw = out / "raw_pool.jsonl"
    write_demo_pool(raw)
    records, report = load_conversations_with_report(raw, strict=False, rejects_path=out / "rejects.jsonl")
    write_jsonl(out / "pool.jsonl", records)
    for rej in report.rejects:
        logger.info("rejected %s: %s (%s)", rej["id"], rej["reason"], rej["field"])
    return report.as_dict() | {"pool": str(out / "pool.jsonl")}


def stage_tiny_models(out: Path) -> dict[str, Any]:
    """The embedded default: a chat base model and two scorer bases (random weights, real tokenizer)."""
    from deita_train.tiny import make_tiny_checkpoint

    paths = {
        "base": make_tiny_checkpoint(out / "base", arch="mistral", seed=0),
        "complexity_base": make_tiny_checkpoint(out / "complexity_base", arch="mistral", seed=1),
        "quality_base": make_tiny_checkpoint(out / "quality_base", arch="mistral", seed=2),
    }
    return {k: str(v) for k, v in paths.items()}


def stage_tokenize(out: Path, pool: Path, model_dir: Path, max_length: int) -> dict[str, Any]:
    """Render and tokenize every pool record with vicuna_v1.1; count truncated and fully masked samples."""
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from deita_train.conversations import load_conversations
    from deita_train.templates import encode_conversation, format_masked

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    counts = {"samples": 0, "truncated": 0, "fully_masked": 0, "tokens": 0, "supervised_tokens": 0}
    sample = None
    for rec in tqdm(load_conversations(pool), desc="tokenize", unit="conv"):
        enc = encode_conversation(rec["conversations"], tokenizer, max_length)
        counts["samples"] += 1
        counts["truncated"] += enc.truncated
        counts["fully_masked"] += enc.fully_masked
        counts["tokens"] += len(enc.input_ids)
        counts["supervised_tokens"] += enc.num_supervised
        if sample is None and len(rec["conversations"]) >= 4:
            sample = format_masked(enc.input_ids, enc.labels, tokenizer)
    (out / "masked_sample.txt").write_text(sample or "")
    logger.info("a tokenized sample, supervised spans in [[...]]:\n%s", sample)
    return counts


def stage_evol(out: Path) -> dict[str, Any]:
    """EVOL Complexity and Quality against a local OpenAI-compatible endpoint that the stage starts."""
    from deita_train.evol import build_demo_evol_sets

    counts = build_demo_evol_sets(out, num_seeds=12)
    return {k: v for k, v in counts.items() if not isinstance(v, (dict, list))}


def _train_summary(result: Any) -> dict[str, Any]:
    """Counts and final metrics of a training run (`deita_train.training.RunResult`)."""
    counts = {k: v for k, v in result.data.as_dict().items() if k in ("n_in", "n_train", "n_truncated", "n_dropped")}
    metrics = {k: float(result.metrics[k]) for k in ("train_loss", "train_runtime") if k in result.metrics}
    return counts | metrics


def stage_scorers(out: Path, evol: Path, models: Path, max_length: int) -> dict[str, Any]:
    """Train the tiny complexity and quality scorers on the EVOL sets (prompt -> digit, loss on the digit)."""
    from deita_train.sft import main as sft_main

    summary = {}
    for kind in ("complexity", "quality"):
        result = sft_main(
            [
                "--config", recipe("tiny", "scorer.yaml"),
                "--model_name_or_path", str(models / f"{kind}_base"),
                "--dataset_name", str(evol / f"{kind}_train.jsonl"),
                "--output_dir", str(out / kind),
                "--max_length", str(max_length),
                *NO_CHECKPOINTS,
            ]
        )  # fmt: skip
        summary |= {f"{kind}_{k}": v for k, v in _train_summary(result).items()}
    return summary


def stage_score(out: Path, pool: Path, scorers: Path, max_length: int) -> dict[str, Any]:
    from deita_train.scoring import ScoreConfig, score_pool

    (cfg,) = parse_config(
        ScoreConfig,
        args=[
            "--config", recipe("score", "tiny.yaml"),
            "--input_path", str(pool),
            "--output_dir", str(out),
            "--complexity_model", str(scorers / "complexity"),
            "--quality_model", str(scorers / "quality"),
            "--max_length", str(max_length),
        ],
    )  # fmt: skip
    return score_pool(cfg)


def stage_embed(out: Path, scored: Path, base: Path) -> dict[str, Any]:
    from deita_train.embedding import EmbedConfig, embed_pool

    (cfg,) = parse_config(
        EmbedConfig,
        args=[
            "--config", recipe("embed", "tiny.yaml"),
            "--input_path", str(scored),
            "--output_dir", str(out),
            "--model_name_or_path", str(base),
        ],
    )  # fmt: skip
    return embed_pool(cfg)


def stage_select(out: Path, scored: Path, embeddings: Path, budgets: list[int]) -> dict[str, Any]:
    from deita_train.select_step import SelectConfig, run_selection

    (cfg,) = parse_config(
        SelectConfig,
        args=[
            "--config", recipe("select", "tiny.yaml"),
            "--scored_path", str(scored),
            "--embeddings_dir", str(embeddings),
            "--output_dir", str(out),
            "--budgets", *map(str, budgets),
            "--source_pools", "deita-train demo pool",
        ],
    )  # fmt: skip
    counts = run_selection(cfg)
    return {k: v for k, v in counts.items() if not isinstance(v, (dict, list))}


def stage_sft(out: Path, selected: Path, base: Path, max_length: int) -> dict[str, Any]:
    """SFT of the tiny chat model on the selection with vicuna_v1.1, loss on the replies only."""
    from deita_train.sft import main as sft_main

    result = sft_main(
        [
            "--config", recipe("tiny", "sft.yaml"),
            "--model_name_or_path", str(base),
            "--dataset_name", str(selected),
            "--output_dir", str(out),
            "--max_length", str(max_length),
            *NO_CHECKPOINTS,
        ]
    )  # fmt: skip
    return _train_summary(result)


def stage_ultrafeedback(out: Path) -> dict[str, Any]:
    from deita_train.ultrafeedback import UltraFeedbackConfig, sample_ultrafeedback

    (cfg,) = parse_config(
        UltraFeedbackConfig,
        args=["--config", recipe("data", "tiny-ultrafeedback.yaml"), "--output_dir", str(out)],
    )
    counts = sample_ultrafeedback(cfg)
    return {k: v for k, v in counts.items() if not isinstance(v, (dict, list))}


def stage_dpo(out: Path, pairs: Path, sft_model: Path, max_length: int) -> dict[str, Any]:
    """DPO on the sampled pairs, the SFT model as both the starting point and the reference."""
    from deita_train.dpo import main as dpo_main

    result = dpo_main(
        [
            "--config", recipe("tiny", "dpo.yaml"),
            "--model_name_or_path", str(sft_model),
            "--dataset_name", str(pairs),
            "--output_dir", str(out),
            "--max_length", str(max_length),
            *NO_CHECKPOINTS,
        ]
    )  # fmt: skip
    return _train_summary(result)


def stage_mt_bench(out: Path, model: Path, n_questions: int) -> dict[str, Any]:
    """Answer the project's demo MT-Bench questions and judge them with a local stub judge."""
    from deita_train.evaluation.mt_bench import run_demo_eval
    from deita_train.jsonl import write_json

    result = run_demo_eval(model, out, n_questions=n_questions, max_new_tokens=32)
    (out / "table.txt").write_text(result["table"] + "\n", encoding="utf-8")
    write_json(out / "summary.json", result["summary"])
    report = result["report"]
    return {"judged": report.n_judged, "ok": report.n_ok, "failed": report.n_failed, "matches": report.n_matches}


def stage_publish(out: Path, model: Path, mt_bench: Path) -> dict[str, Any]:
    """Dry-run publish of the chat model: exactly what would be uploaded, card included, no token needed."""
    from deita_train.publish import main as publish_main

    args = ["model", "--path", str(model), "--repo_id", "local/deita-tiny-demo", "--dry_run", str(out / "model")]
    args += ["--recipe", recipe("tiny", "dpo.yaml")]
    summary_json = mt_bench / "summary.json"
    if summary_json.exists():
        args += ["--eval_results", str(summary_json)]
    return {"dry_run_dir": str(publish_main(args))}


def stage_report(out: Path, run_dir: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Plots (score histograms, selection curve, loss curves, MT-Bench radar) and a Markdown summary."""
    from deita_train.report import build_report

    table = run_dir / "mt_bench" / "table.txt"
    return build_report(
        out,
        records,
        scored=run_dir / "score" / "scored.jsonl",
        selection_stats=run_dir / "select" / "selection_stats.json",
        trainer_states={
            "scorer: complexity": run_dir / "scorers" / "complexity" / "trainer_state.json",
            "scorer: quality": run_dir / "scorers" / "quality" / "trainer_state.json",
            "SFT": run_dir / "sft" / "trainer_state.json",
            "DPO": run_dir / "dpo" / "trainer_state.json",
        },
        eval_table=table.read_text() if table.exists() else None,
        extra_figures={"MT-Bench (radar)": run_dir / "mt_bench" / "mt_bench_radar.png"},
    )


def build_stages(cfg: DemoConfig) -> list[Stage]:
    """The demo's stages; each lists the recipe it runs among its inputs, so editing a recipe redoes it."""
    out = Path(cfg.output_dir)
    pool = out / "pool" / "pool.jsonl"
    models = out / "tiny_models"
    n = cfg.max_length
    selected = out / "select" / f"deita-{min(cfg.budgets)}" / f"deita-{min(cfg.budgets)}.jsonl"
    scored, embeddings, pairs = out / "score" / "scored.jsonl", out / "embed" / "embeddings.npy", out / "ultrafeedback"
    scorer_weights = [out / "scorers" / k / "model.safetensors" for k in ("complexity", "quality")]
    evol_sets = [out / "evol" / f"{k}_train.jsonl" for k in ("complexity", "quality")]
    return [
        Stage("pool", stage_pool, outputs=["pool.jsonl", "rejects.jsonl"]),
        Stage("tiny_models", stage_tiny_models, outputs=["base/model.safetensors"]),
        Stage(
            "tokenize", lambda d: stage_tokenize(d, pool, models / "base", n), {"n": n}, [pool], ["masked_sample.txt"]
        ),
        Stage("evol", stage_evol, outputs=["complexity_train.jsonl", "quality_train.jsonl"]),
        Stage(
            "scorers",
            lambda d: stage_scorers(d, out / "evol", models, n),
            {"n": n},
            [recipe("tiny", "scorer.yaml"), *evol_sets],
            ["complexity/model.safetensors", "quality/model.safetensors"],
        ),
        Stage(
            "score",
            lambda d: stage_score(d, pool, out / "scorers", n),
            {"n": n},
            [recipe("score", "tiny.yaml"), pool, *scorer_weights],
            ["scored.jsonl"],
        ),
        Stage(
            "embed",
            lambda d: stage_embed(d, scored, models / "base"),
            inputs=[recipe("embed", "tiny.yaml"), scored],
            outputs=["embeddings.npy", "ids.json"],
        ),
        Stage(
            "select",
            lambda d: stage_select(d, scored, out / "embed", cfg.budgets),
            {"budgets": cfg.budgets},
            [recipe("select", "tiny.yaml"), scored, embeddings],
            ["selection_stats.json"],
        ),
        Stage(
            "sft",
            lambda d: stage_sft(d, selected, models / "base", n),
            {"n": n},
            [recipe("tiny", "sft.yaml"), selected],
            ["model.safetensors"],
        ),
        Stage(
            "ultrafeedback",
            stage_ultrafeedback,
            inputs=[recipe("data", "tiny-ultrafeedback.yaml")],
            outputs=["pairs.jsonl"],
        ),
        Stage(
            "dpo",
            lambda d: stage_dpo(d, pairs / "pairs.jsonl", out / "sft", n),
            {"n": n},
            [recipe("tiny", "dpo.yaml"), pairs / "pairs.jsonl", out / "sft" / "model.safetensors"],
            ["model.safetensors"],
        ),
        Stage(
            "mt_bench",
            lambda d: stage_mt_bench(d, out / "dpo", cfg.mt_bench_questions),
            {"q": cfg.mt_bench_questions},
            [out / "dpo" / "model.safetensors"],
            ["table.txt"],
        ),
        Stage(
            "publish",
            lambda d: stage_publish(d, out / "dpo", out / "mt_bench"),
            inputs=[recipe("tiny", "dpo.yaml"), out / "dpo" / "model.safetensors", out / "mt_bench" / "table.txt"],
            outputs=["model/README.md"],
        ),
    ]


def summarize(records: list[dict[str, Any]]) -> str:
    lines = ["", "deita-train demo: summary", f"{'stage':<14} {'status':<8} {'seconds':>8}  counts"]
    for r in records:
        counts = {k: v for k, v in r["summary"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        status = "reused" if r.get("reused") else "ran"
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(counts.items())[:8])
        lines.append(f"{r['name']:<14} {status:<8} {r['seconds']:>8.1f}  {shown}")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> list[dict[str, Any]]:
    setup_logging()
    (cfg,) = parse_config(DemoConfig, args=args)
    out = Path(cfg.output_dir)
    runner = StageRunner(out, force=cfg.force)
    records = runner.run_all(build_stages(cfg))
    report = stage_report(out / "report", out, records)
    total = sum(r["seconds"] for r in records if not r.get("reused"))
    table = out / "mt_bench" / "table.txt"
    if table.exists():
        print("\n" + table.read_text(), flush=True)
    print(summarize(records), flush=True)
    print(f"\nran {sum(not r.get('reused') for r in records)} of {len(records)} stages in {total:.0f}s; "
          f"report: {report['report']}", flush=True)  # fmt: skip
    return records


if __name__ == "__main__":
    main()
