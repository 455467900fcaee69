"""Optional vLLM backend for the scorers: the six digit log-probs at the position after each prompt.

Off unless vLLM is installed and a GPU is present (`vllm_available`). Each prompt is sent as token
ids (the same `encode_prompt` ids as the HF backend) with one generated token restricted to the
six digits (``allowed_token_ids``) and ``logprobs=6`` under ``logprobs_mode="processed_logprobs"``:
the whitelist is applied before those log-probs are taken, so the six returned values are the
digits' log-softmax, whose softmax is the softmax of the six raw logits. A prompt whose six digits
do not all come back finite gets NaN (rejected by the caller), never a made-up score.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def vllm_available() -> bool:
    """True when vLLM is importable and CUDA is present."""
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def digit_logprobs(step_logprobs: dict[int, Any], digit_ids: Sequence[int]) -> list[float]:
    """The six digit values of one position's ``{token_id: Logprob | float}``; NaN for a missing one."""
    out = []
    for tid in digit_ids:
        v = step_logprobs.get(tid)
        v = getattr(v, "logprob", v)
        out.append(float(v) if v is not None and math.isfinite(float(v)) else math.nan)
    return out


class VllmScorer:
    """One vLLM engine per process; `score_token_ids` mirrors `deita_train.scoring.score_token_ids`."""

    def __init__(self, path: str, *, max_length: int, dtype: str = "bfloat16", **engine_kwargs: Any) -> None:
        from vllm import LLM

        self.llm = LLM(
            model=path,
            dtype=dtype,
            max_model_len=max_length + 1,
            max_logprobs=6,
            logprobs_mode="processed_logprobs",
            **engine_kwargs,
        )

    def score_token_ids(self, token_ids: Sequence[Sequence[int]], digit_ids: Sequence[int]) -> np.ndarray:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from deita_train.scoring import expected_from_logits

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=6, allowed_token_ids=list(digit_ids))
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in token_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        rows = []
        for out in outputs:
            steps = out.outputs[0].logprobs
            rows.append(digit_logprobs(steps[0], digit_ids) if steps else [math.nan] * len(digit_ids))
        return expected_from_logits(np.array(rows, dtype=np.float64).reshape(len(rows), len(digit_ids)))
