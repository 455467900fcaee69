"""Expected GPU-hours per stage, from the FLOP count: the figures in README's reproduction guide.

The estimate is the standard dense-transformer count: a forward pass costs ``2 * N * T`` FLOPs and
a training step ``6 * N * T`` (forward + backward) for ``N`` parameters and ``T`` tokens, plus one
more forward (``2 * N * T``) for the activation checkpointing every real recipe turns on; DPO adds
the reference model's forward. Attention's extra ``O(T^2)`` term is small at 2048 tokens and is left
out. GPU-hours = FLOPs / (peak x MFU) / 3600.
Token counts are the stated assumptions below (override them on the command line); MFU is an
assumption too, not a measurement: a run's own logs give the real figure.

    python -m deita_train.compute              # the README table (H100 and A100, bf16, 40% MFU)
    python -m deita_train.compute --mfu 0.3
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass


MISTRAL_7B_PARAMS = 7.24e9
H100_BF16_DENSE_TFLOPS = 989.0
A100_BF16_DENSE_TFLOPS = 312.0


@dataclass
class StageEstimate:
    stage: str
    model: str
    params: float
    tokens: float
    flops_per_token_per_param: (
        int  # 2 forward only; 8 training (fwd + bwd + checkpoint recompute); 10 DPO (+ reference)
    )
    assumption: str

    @property
    def flops(self) -> float:
        return self.flops_per_token_per_param * self.params * self.tokens

    def gpu_hours(self, peak_tflops: float, mfu: float) -> float:
        return self.flops / (peak_tflops * 1e12 * mfu) / 3600


def deita_stages(  # defaults: recipes/pipeline/deita-7b-v1.0.yaml (Mistral-7B scorers, X_sota, deita-6k)
    pool_size: int = 300_000,
    turns_per_conversation: float = 3.0,
    complexity_prompt_tokens: float = 250.0,
    quality_prompt_tokens: float = 800.0,
    embed_tokens: float = 1500.0,
    sft_samples: int = 6_000,
    sft_tokens: float = 1800.0,
    sft_epochs: int = 6,
    scorer_samples: int = 11_400,
    scorer_tokens: float = 500.0,
    scorer_epochs: int = 6,
    dpo_pairs: int = 10_000,
    dpo_pair_tokens: float = 1200.0,
    dpo_epochs: int = 9,
) -> list[StageEstimate]:
    """The pipeline's GPU stages with the token counts they process (defaults: the paper's setting)."""
    turns = pool_size * turns_per_conversation
    return [
        StageEstimate(
            "scorer training (x2)",
            "Mistral-7B",
            MISTRAL_7B_PARAMS,
            2 * scorer_samples * scorer_tokens * scorer_epochs,
            8,
            f"{scorer_samples} samples x {scorer_tokens:.0f} tokens x {scorer_epochs} epochs, two scorers "
            "(the EVOL recipe's 2k seeds x 6, 95% train)",
        ),
        StageEstimate(
            "scoring (complexity + quality)",
            "Mistral-7B scorers",
            MISTRAL_7B_PARAMS,
            turns * (complexity_prompt_tokens + quality_prompt_tokens),
            2,
            f"{pool_size} conversations x {turns_per_conversation:g} turns x "
            f"({complexity_prompt_tokens:.0f} + {quality_prompt_tokens:.0f}) prompt tokens",
        ),
        StageEstimate(
            "embedding",
            "Mistral-7B",
            MISTRAL_7B_PARAMS,
            pool_size * embed_tokens,
            2,
            f"{pool_size} conversations x {embed_tokens:.0f} tokens (truncated at 2048)",
        ),
        StageEstimate("selection", "-", 0.0, 0.0, 0, "a few matrix multiplies; minutes on one GPU"),
        StageEstimate(
            "SFT deita-6k",
            "Mistral-7B",
            MISTRAL_7B_PARAMS,
            sft_samples * sft_tokens * sft_epochs,
            8,
            f"{sft_samples} samples x {sft_tokens:.0f} tokens x {sft_epochs} epochs (no padding waste)",
        ),
        StageEstimate(
            "DPO UltraFeedback-10k",
            "Mistral-7B",
            MISTRAL_7B_PARAMS,
            dpo_pairs * dpo_pair_tokens * dpo_epochs,
            10,
            f"{dpo_pairs} pairs x {dpo_pair_tokens:.0f} tokens (chosen + rejected) x {dpo_epochs} epochs",
        ),
    ]


def format_table(stages: list[StageEstimate], mfu: float) -> str:
    lines = [
        f"Assumed: {mfu:.0%} MFU of the bf16 dense peak (H100 {H100_BF16_DENSE_TFLOPS:g}, A100 {A100_BF16_DENSE_TFLOPS:g} TFLOP/s).",
        "",
        "| stage | model | tokens | FLOPs | H100 GPU-hours | A100 GPU-hours | assumption |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    totals = [0.0, 0.0]
    for s in stages:
        hours = [
            s.gpu_hours(peak, mfu) if s.params else 0.0 for peak in (H100_BF16_DENSE_TFLOPS, A100_BF16_DENSE_TFLOPS)
        ]
        totals = [t + h for t, h in zip(totals, hours)]
        lines.append(
            f"| {s.stage} | {s.model} | {s.tokens:.3g} | {s.flops:.2e} | {hours[0]:.1f} | {hours[1]:.1f} | {s.assumption} |"
        )
    lines.append(f"| **total** | | | | **{totals[0]:.1f}** | **{totals[1]:.1f}** | |")
    return "\n".join(lines)


def main(args: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--pool_size", type=int, default=300_000)
    parser.add_argument("--sft_samples", type=int, default=6_000)
    parser.add_argument("--scorer_samples", type=int, default=11_400, help="per scorer; the original used 6,000")
    ns = parser.parse_args(args)
    table = format_table(
        deita_stages(pool_size=ns.pool_size, sft_samples=ns.sft_samples, scorer_samples=ns.scorer_samples), ns.mfu
    )
    print(table)
    return table


if __name__ == "__main__":
    main()
