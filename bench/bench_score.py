"""Scoring throughput: the original's one generate() call per turn against batched `expected_scores`.

    python bench/bench_score.py [--turns 200] [--batch-size 64] [--threads N]

Same tiny Mistral-architecture scorer (random weights, real tokenizer), same prompts (complexity and
quality prompts of the first ``--turns`` turns of FastChat's dummy_conversation.json, or generated
text when the reference data is absent), same process. Prints prompts/s for each way, the ratio and
the largest score difference. CPU only: the GPU part (bf16, vLLM) is not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_turns(n: int) -> tuple[list[tuple[str, str]], str]:
    from deita_train.conversations import load_conversations, turn_pairs

    data = Path(os.environ.get("DEITA_SHARED_DATA", ROOT.parent / "shared" / "data"))
    path = data / "sharegpt" / "dummy_conversation.json"
    if path.is_file():
        turns = [p for rec in load_conversations(path) for p in turn_pairs(rec)][:n]
        return turns, str(path)
    rng = random.Random(0)
    words = "the a model data score turn quality complexity answer question explain why how list code".split()

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    return [(text(rng.randint(5, 60)), text(rng.randint(10, 200))) for _ in range(n)], "generated text"


def original_way(model, tokenizer, prompts: list[str]) -> list[float]:
    """hkust-nlp/deita `Scorer.infer_score` (HF backend), with the Mistral ids derived rather than typed in."""
    import numpy as np
    from scipy.special import softmax

    from deita_train.scoring import digit_token_ids

    ids = digit_token_ids(tokenizer)
    out = []
    for prompt in prompts:
        input_ids = tokenizer.encode(prompt, return_tensors="pt")
        gen = model.generate(
            input_ids, max_new_tokens=2, num_return_sequences=1, return_dict_in_generate=True, output_scores=True
        )
        logits = gen.scores[0][0].numpy()
        out.append(float(softmax(logits[ids]) @ np.arange(1, 7)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from deita_train.scorer_prompts import complexity_prompt, quality_prompt
    from deita_train.scoring import expected_scores
    from deita_train.tiny import make_tiny_checkpoint

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    turns, source = load_turns(args.turns)
    prompts = [complexity_prompt(h) for h, _ in turns] + [quality_prompt(h, g) for h, g in turns]
    with tempfile.TemporaryDirectory() as tmp:
        path = make_tiny_checkpoint(Path(tmp) / "scorer", seed=1, initializer_range=0.2)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
    lengths = [len(tokenizer.encode(p)) for p in prompts]

    original_way(model, tokenizer, prompts[:3])  # warm-up
    expected_scores(model, tokenizer, prompts[:3], batch_size=args.batch_size)

    # Three interleaved rounds, median of each side: this VM's speed drifts by +-30% over seconds, and
    # interleaving exposes both ways to the same drift.
    t_origs, runs = [], []
    for _ in range(3):
        t0 = time.perf_counter()
        ref = original_way(model, tokenizer, prompts)
        t_origs.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ours = expected_scores(model, tokenizer, prompts, batch_size=args.batch_size)
        runs.append(time.perf_counter() - t0)
    t_orig, t_ours = sorted(t_origs)[1], sorted(runs)[1]

    diff = float(np.max(np.abs(np.array(ours) - np.array(ref))))
    result = {
        "prompts": len(prompts),
        "turns": len(turns),
        "source": source,
        "prompt_tokens_mean": round(float(np.mean(lengths)), 1),
        "prompt_tokens_max": int(max(lengths)),
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "original_seconds_per_pass": [round(r, 3) for r in t_origs],
        "ours_seconds_per_pass": [round(r, 4) for r in runs],
        "original_generate_per_turn_samples_per_s": round(len(prompts) / t_orig, 1),
        "ours_batched_forward_samples_per_s": round(len(prompts) / t_ours, 1),
        "speedup": round(t_orig / t_ours, 1),
        "max_abs_score_diff": diff,
        "score_range": [round(min(ref), 3), round(max(ref), 3)],
    }
    print(json.dumps(result, indent=2))
    print(
        f"original (generate per turn): {result['original_generate_per_turn_samples_per_s']} samples/s | "
        f"ours (batched forward): {result['ours_batched_forward_samples_per_s']} samples/s | "
        f"speedup {result['speedup']}x | max |score diff| {diff:.2e}"
    )
    print("GPU part (bf16, vLLM backend) not measured: no GPU in this run.")


if __name__ == "__main__":
    main()
