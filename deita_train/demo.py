"""`make demo`: the whole pipeline on the embedded default (tiny models, the project's demo pool), on CPU.

Each stage is cached (see `deita_train.stages`): a second run reuses what did not change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deita_train.config import parse_config, setup_logging
from deita_train.stages import Stage, StageRunner


logger = logging.getLogger("deita_train.demo")


@dataclass
class DemoConfig:
    output_dir: str = field(default="runs/demo", metadata={"help": "Where every stage writes its outputs."})
    force: bool = field(default=False, metadata={"help": "Redo every stage even if nothing changed."})
    max_length: int = field(default=256, metadata={"help": "Token budget per sample for the tiny runs."})


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
    """The embedded default models: a chat base model and two scorer bases, random weights, real tokenizer."""
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


def build_stages(cfg: DemoConfig) -> list[Stage]:
    out = Path(cfg.output_dir)
    pool = out / "pool" / "pool.jsonl"
    models = out / "tiny_models"
    return [
        Stage("pool", stage_pool, outputs=["pool.jsonl", "rejects.jsonl"]),
        Stage("tiny_models", stage_tiny_models, outputs=["base/model.safetensors"]),
        Stage(
            "tokenize",
            lambda d: stage_tokenize(d, pool, models / "base", cfg.max_length),
            config={"max_length": cfg.max_length},
            inputs=[pool],
            outputs=["masked_sample.txt"],
        ),
    ]


def summarize(records: list[dict[str, Any]]) -> str:
    lines = ["", "deita-train demo: summary", f"{'stage':<14} {'status':<8} {'seconds':>8}  counts"]
    for r in records:
        counts = {k: v for k, v in r["summary"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        status = "reused" if r.get("reused") else "ran"
        shown = ", ".join(f"{k}={v}" for k, v in counts.items())
        lines.append(f"{r['name']:<14} {status:<8} {r['seconds']:>8.1f}  {shown}")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> list[dict[str, Any]]:
    setup_logging()
    (cfg,) = parse_config(DemoConfig, args=args)
    runner = StageRunner(cfg.output_dir, force=cfg.force)
    records = runner.run_all(build_stages(cfg))
    print(summarize(records), flush=True)
    return records


if __name__ == "__main__":
    main()
