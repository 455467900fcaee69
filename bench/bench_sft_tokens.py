"""Benchmark: supervised tokens per second of SFT, the original's padding against this project's.

Not a test: it prints figures. Everything runs through the real entry point (`deita_train.sft.build_trainer`
+ `trainer.train()`, TRL's SFTTrainer), on the tiny model, on CPU, over the same conversations in the same
run. Only `trainer.train()` is timed (one epoch over the samples); data preparation is not.

Paths compared (same samples, same model, same max length 2048, same optimizer):

  original   every sample padded to 2048 tokens (`padding="max_length"` in the original train.py, here
             `pad_to_multiple_of: 2048`), micro-batch 1 (`BSZPERDEV=1` in the original sft.sh)
  default    this project's default: right padding to the longest sample of the micro-batch, micro-batch 2
             (as in recipes/mistral-7b/sft/deita-6k.yaml), random order
  packing    `packing: true`: best-fit-decreasing packing into rows of up to 2048 tokens, padding-free,
             sequences isolated by position_ids (micro-batch 1 row)

Supervised tokens are the label tokens (assistant replies and their </s>), identical for the three paths,
so the ratio of supervised tokens/s is the speed-up on the same learning signal.

Length mix: FastChat's ShareGPT dummy conversations and AlpacaEval instruction/reference-output pairs from
../shared/data (or $DEITA_SHARED_DATA) when present; otherwise synthetic conversations with log-normal
lengths. No GPU measurement: this project's machines have none (the padding waste is the same there, while
the absolute speed is not).

    python bench/bench_sft_tokens.py                    # 24 samples, a few minutes on 2 cores
    python bench/bench_sft_tokens.py --samples 128 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "sft.yaml"


def shared_data() -> Path:
    return Path(os.environ.get("DEITA_SHARED_DATA", ROOT.parent / "shared" / "data"))


def load_mix(seed: int) -> tuple[list[dict], str]:
    """Conversations from the shared reference data when present, else synthetic ones."""
    data = shared_data()
    sharegpt = data / "sharegpt" / "dummy_conversation.json"
    alpaca = [
        data / "alpaca_eval" / n for n in ("reference_gpt4_1106_preview_v2.json", "reference_text_davinci_003_v1.json")
    ]
    records: list[dict] = []
    if sharegpt.is_file():
        for i, rec in enumerate(json.loads(sharegpt.read_text())):
            records.append({"id": f"sharegpt-{i}", "conversations": rec["conversations"]})
    for path in alpaca:
        if path.is_file():
            for i, row in enumerate(json.loads(path.read_text())):
                turns = [{"from": "human", "value": row["instruction"]}, {"from": "gpt", "value": row["output"]}]
                records.append({"id": f"{path.stem}-{i}", "conversations": turns})
    if records:
        return records, f"shared data ({len(records)} conversations: ShareGPT dummy + AlpacaEval references)"
    rng = random.Random(seed)
    words = "the model answers questions about data selection quality complexity and diversity".split()
    for i in range(600):
        n_turns = rng.choice([1, 1, 2, 3])
        turns = []
        for _ in range(n_turns):
            q = " ".join(rng.choices(words, k=max(3, int(rng.lognormvariate(3.0, 0.8)))))
            a = " ".join(rng.choices(words, k=max(3, int(rng.lognormvariate(5.0, 0.9)))))
            turns += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        records.append({"id": f"synthetic-{i}", "conversations": turns})
    return records, "synthetic conversations (shared data not found)"


def run_path(name: str, data: Path, tiny: Path, out: Path, extra: list[str]) -> dict:
    import torch

    from deita_train import sft

    argv = ["--config", str(RECIPE), "--model_name_or_path", str(tiny), "--dataset_name", str(data)]
    argv += ["--output_dir", str(out / name), "--max_length", "2048", "--num_train_epochs", "1"]
    argv += ["--save_strategy", "no", "--logging_steps", "1000", "--auto_resume", "false", "--seed", "0"]
    argv += ["--disable_tqdm", "true"]
    argv += ["--learning_rate", "1e-4", "--lr_scheduler_type", "constant", "--warmup_steps", "0"]
    trainer = sft.build_trainer(*sft.parse_args(argv + extra))
    report = trainer.deita_report
    loader = trainer.get_train_dataloader()
    processed = sum(int(batch["input_ids"].numel()) for batch in loader)  # token positions the model computes
    torch.manual_seed(0)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    return {
        "path": name,
        "micro_batch": trainer.args.per_device_train_batch_size,
        "steps": trainer.state.global_step,
        "samples": report.n_train,
        "positions": processed,
        "supervised": report.n_supervised_tokens,
        "seconds": seconds,
        "tok_s": report.n_supervised_tokens / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--samples", type=int, default=24, help="conversations drawn from the mix (same for all paths)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--paths", nargs="+", default=["original", "default", "packing"])
    opts = parser.parse_args()

    import torch

    from deita_train.config import setup_logging
    from deita_train.jsonl import write_jsonl
    from deita_train.templates import encode_conversation
    from deita_train.tiny import load_mistral_tokenizer, make_tiny_checkpoint

    if opts.threads:
        torch.set_num_threads(opts.threads)
    setup_logging(logging.WARNING)
    logging.getLogger("deita_train.training").setLevel(logging.WARNING)  # no start-up sample in the figures
    records, origin = load_mix(opts.seed)
    random.Random(opts.seed).shuffle(records)
    sample = records[: opts.samples]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny = make_tiny_checkpoint(tmp / "tiny")
        data = tmp / "mix.jsonl"
        write_jsonl(data, sample)
        tok = load_mistral_tokenizer(tmp / "tok")
        lengths = [len(encode_conversation(r["conversations"], tok, 2048).input_ids) for r in sample]
        print(f"data: {origin}; {len(sample)} sampled, seed {opts.seed}")
        print(
            f"lengths (tokens, cut at 2048): mean {statistics.mean(lengths):.0f}, median {statistics.median(lengths):.0f}, "
            f"max {max(lengths)}, truncated {sum(n >= 2048 for n in lengths)}"
        )
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU only (no GPU measured)")
        extras = {
            "original": [
                "--per_device_train_batch_size",
                "1",
                "--total_batch_size",
                "1",
                "--pad_to_multiple_of",
                "2048",
            ],
            "default": ["--per_device_train_batch_size", "2", "--total_batch_size", "2"],
            "packing": ["--per_device_train_batch_size", "1", "--total_batch_size", "1", "--packing", "true"],
        }
        rows = [run_path(name, data, tiny, tmp / "runs", extras[name]) for name in opts.paths]

    base = next((r for r in rows if r["path"] == "original"), None)
    print()
    print(
        f"{'path':<9} {'micro':>5} {'steps':>5} {'positions':>10} {'supervised':>10} {'seconds':>8} {'sup tok/s':>10} {'vs original':>11}"
    )
    for r in rows:
        ratio = f"{r['tok_s'] / base['tok_s']:.2f}x" if base else "-"
        print(
            f"{r['path']:<9} {r['micro_batch']:>5} {r['steps']:>5} {r['positions']:>10} {r['supervised']:>10} "
            f"{r['seconds']:>8.1f} {r['tok_s']:>10.1f} {ratio:>11}"
        )
    if base:
        default = next((r for r in rows if r["path"] == "default"), None)
        if default:
            print(
                f"\nratio default / original (supervised tokens per second): {default['tok_s'] / base['tok_s']:.2f}x"
            )
        packing = next((r for r in rows if r["path"] == "packing"), None)
        if packing:
            print(f"ratio packing / original (supervised tokens per second): {packing['tok_s'] / base['tok_s']:.2f}x")


if __name__ == "__main__":
    main()
