"""Deterministic answers to the judge prompts of MT-Bench and AlpacaEval, for `StubOpenAIServer`.

The rules are simple enough for a test to predict every score, and shaped like the real judges'
answers so the real request, parse and aggregate paths run:

* MT-Bench single grading (FastChat's `"[[rating]]"` prompts): a short explanation ending in
  `Rating: [[k]]`, with k = `mt_bench_rating(answer)` (1 + words/8, capped at 10) for the answer
  being graded (turn 2's answer for the multi-turn prompts).
* AlpacaEval 2 (`logprobs` requested, `m`/`M` identifiers): one token, `m` or `M`, with
  `top_logprobs` where P(M) = `ae2_probability_second(len(output_1), len(output_2))`: longer wins.
* AlpacaEval 1 (ranking prompt): the Python list ranking the longer output first (ties: model_1).

Anything else gets None, so it composes with other responders.
"""

from __future__ import annotations

import math
import re
from typing import Any


_SINGLE_ANSWER = re.compile(r"\[The Start of Assistant's Answer\]\n(.*)\n\[The End of Assistant's Answer\]", re.DOTALL)
_MULTI_END = "\n\n<|The End of Assistant A's Conversation with User|>"
_MULTI_ANSWER_MARK = "### Assistant A:\n"
_AE2_OUTPUTS = re.compile(
    r'"model_identifier": "m",\s*"output": """(.*?)"""\s*\},\s*\{\s*"model_identifier": "M",\s*"output": """(.*?)"""',
    re.DOTALL,
)
_AE1_OUTPUTS = re.compile(
    r'"model": "model_1",\s*"answer": """(.*?)"""\s*\},\s*\{\s*"model": "model_2",\s*"answer": """(.*?)"""',
    re.DOTALL,
)
AE2_SCALE = 100.0  # characters of length difference per logit unit


def mt_bench_rating(answer: str) -> int:
    """The stub judge's MT-Bench score for an answer: longer answers score higher, 1..10."""
    return min(10, 1 + len(answer.split()) // 8)


def ae2_probability_second(len_1: int, len_2: int) -> float:
    """P(the stub picks output_2, 'M') in the AlpacaEval 2 prompt: a logistic in the length difference."""
    return 1.0 / (1.0 + math.exp(-(len_2 - len_1) / AE2_SCALE))


def _all_text(body: dict) -> str:
    parts = []
    for m in body.get("messages") or []:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
    return "\n".join(parts)


def _mt_bench_answer(user_prompt: str) -> str | None:
    if _MULTI_END in user_prompt:
        head = user_prompt[: user_prompt.rindex(_MULTI_END)]
        i = head.rfind(_MULTI_ANSWER_MARK)
        return None if i < 0 else head[i + len(_MULTI_ANSWER_MARK) :]
    m = _SINGLE_ANSWER.search(user_prompt)
    return m.group(1) if m else None


def _token(tok: str, logprob: float) -> dict[str, Any]:
    return {"token": tok, "logprob": logprob, "bytes": list(tok.encode("utf-8"))}


def ae2_logprobs(len_1: int, len_2: int) -> dict[str, Any]:
    """The response the AlpacaEval 2 weighted annotator reads: chosen token plus top_logprobs for m and M."""
    p2 = min(max(ae2_probability_second(len_1, len_2), 1e-12), 1 - 1e-12)
    lp_m, lp_cap_m = math.log(1 - p2), math.log(p2)
    chosen = "M" if p2 > 0.5 else "m"
    top = sorted([_token("m", lp_m), _token("M", lp_cap_m), _token("The", -15.0)], key=lambda t: -t["logprob"])
    first = {**_token(chosen, lp_cap_m if chosen == "M" else lp_m), "top_logprobs": top}
    return {"content": chosen, "logprobs": {"content": [first]}}


def judge_responder(body: dict) -> str | dict | None:
    """Answer MT-Bench and AlpacaEval judge prompts deterministically; None for any other request."""
    text = _all_text(body)
    if '"[[rating]]"' in text:
        messages = body.get("messages") or []
        user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        answer = _mt_bench_answer(user)
        if answer is None:
            return None
        k = mt_bench_rating(answer)
        return f"The response has {len(answer.split())} words; the stub judge scores by length.\n\nRating: [[{k}]]"
    if body.get("logprobs"):
        m = _AE2_OUTPUTS.search(text)
        if m is None:
            return None
        return ae2_logprobs(len(m.group(1)), len(m.group(2)))
    if "'rank': <model-rank>" in text:
        m = _AE1_OUTPUTS.search(text)
        if m is None:
            return None
        first, second = ("model_1", "model_2") if len(m.group(1)) >= len(m.group(2)) else ("model_2", "model_1")
        return f"[{{'model': '{first}', 'rank': 1}}, {{'model': '{second}', 'rank': 2}}]"
    return None
