"""Deita complexity and quality scores: one batched forward pass per prompt batch, never a generate loop.

The score of a rendered scorer prompt is the expectation of 1..6 under the softmax of the six
digit-token logits at the position right after the prompt (the original's ``infer_score``). We
compute it from the logits of that one position, in length-sorted padded batches under
``torch.inference_mode``, with digit ids derived from the tokenizer and no logits processors.

Per-turn scoring follows the original: complexity on each human turn alone, quality on each
(human, gpt) pair alone, a trailing human turn paired with an empty response.

Truncation policy for prompts longer than the scorer's context (``max_length`` tokens, BOS and
template included), ``truncation="head_tail"`` (default): the template always stays whole.

* complexity: keep the head of the instruction;
* quality: the instruction keeps its head, up to ``instruction_share`` of the content budget (more
  when the response is short); the response keeps its head (2/3 of its budget) and its tail (1/3),
  joined by ``TRUNCATION_MARKER`` ("\\n...\\n").

Every truncated turn is flagged in the scored record (``complexity_truncated`` /
``quality_truncated``, one bool per turn). ``truncation="reject"`` rejects such records instead.
A prompt that cannot be scored (nothing left after truncation, non-finite logits) is rejected with
the reason; a score is never invented.

`score_pool` is the resumable, multi-process job over a whole pool (see `ScoreConfig`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deita_train.conversations import load_conversations_with_report, turn_pairs
from deita_train.scorer_prompts import SCORE_DIGITS, complexity_prompt, quality_prompt


logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 2048
TRUNCATION_MARKER = "\n...\n"
TRUNCATION_POLICIES = ("head_tail", "reject")
SCORE_KINDS = ("complexity", "quality")
_SCORE_VALUES = np.arange(1, len(SCORE_DIGITS) + 1, dtype=np.float64)


class ScoringError(ValueError):
    """A prompt or record that cannot be scored; the message says why."""


class PromptTooLongError(ScoringError):
    """A prompt over the scorer's context under ``truncation="reject"``."""


# --------------------------------------------------------------------------------------- tokens


def digit_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the bare digits 1..6 as the scorer predicts them right after a prompt's trailing space.

    For each digit d and each template, ``encode(prompt + d)`` must equal ``encode(prompt) + [id]``:
    the prompt tokenizes the same with or without the digit after it (its trailing space is its
    own token, SentencePiece's ``▁``), and the digit is one token. Anything else raises, since the
    scorer would then be read at the wrong token.
    """
    probes = (complexity_prompt("x"), quality_prompt("x", "y"), "x: ")
    ids: list[int] = []
    for d in SCORE_DIGITS:
        found = set()
        for probe in probes:
            base = tokenizer.encode(probe)
            with_digit = tokenizer.encode(probe + d)
            if len(with_digit) != len(base) + 1 or with_digit[: len(base)] != base:
                raise ScoringError(
                    f"tokenizer {type(tokenizer).__name__}: {probe[-12:]!r} + {d!r} tokenizes to "
                    f"{tokenizer.convert_ids_to_tokens(with_digit[-3:])} (tail), not the prompt's tokens plus one "
                    "digit token; the Deita prompt's trailing space would not be read as the original's"
                )
            found.add(with_digit[-1])
        if len(found) != 1:
            raise ScoringError(f"digit {d!r} tokenizes to different ids after different prompts: {sorted(found)}")
        (tid,) = found
        direct = tokenizer.convert_tokens_to_ids(d)
        if direct != tid:
            raise ScoringError(f"digit {d!r}: id after a prompt is {tid} but the vocabulary maps {d!r} to {direct}")
        ids.append(tid)
    if len(set(ids)) != len(ids):
        raise ScoringError(f"digit ids are not distinct: {ids}")
    return ids


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """``tokenizer.encode(prompt)`` for each prompt as the original (BOS, no EOS), in one batched call.

    Refuses a tokenizer that appends EOS: the scorer must see the bare prompt.
    """
    if not prompts:
        return []
    ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    for i, row in enumerate(ids):
        if eos is not None and row and row[-1] == eos:
            raise ScoringError(
                f"tokenizer appends EOS to prompt {i} (add_eos_token?); the scorer must see the bare prompt"
            )
    return ids


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """One prompt's token ids (see `encode_prompts`)."""
    return encode_prompts(tokenizer, [prompt])[0]


# ------------------------------------------------------------------------------------- forward


_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


def _digit_head(model: Any, digit_ids: Any) -> tuple[Any, Any] | None:
    """The six rows of the output projection (and bias) for the digit tokens, when logits are a plain
    linear map of the final hidden state; None for architectures that rescale or cap logits."""
    config = getattr(model, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if head is None or decoder is None or not hasattr(head, "weight"):
        return None
    bias = getattr(head, "bias", None)
    return head.weight[digit_ids], (None if bias is None else bias[digit_ids])


def _batch_logits(
    model: Any, rows: list[list[int]], digit_ids: Any, padding_side: str, pad_id: int, head: tuple[Any, Any] | None
) -> Any:
    """The six digit logits (float32, shape (B, 6)) at the position after each row's last token.

    Only the digits' six rows of the output projection are applied to the final hidden state at the
    last real position, instead of the whole vocabulary: the same numbers at a sliver of the cost.
    """
    import torch

    device = model.device
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        sl = slice(width - len(r), width) if padding_side == "left" else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    ids, mask = ids.to(device), mask.to(device)
    # positions count real tokens only, so a left-padded row sees the positions of its unpadded self
    pos = (mask.cumsum(-1) - 1).clamp(min=0) if padding_side == "left" else None
    last_index = torch.full((len(rows),), width - 1, device=device) if padding_side == "left" else mask.sum(-1) - 1
    rows_index = torch.arange(len(rows), device=device)
    if head is not None:
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        last = hidden.last_hidden_state[rows_index, last_index]
        weight, bias = head
        logits = last @ weight.T
        return (logits if bias is None else logits + bias).float()
    keep, where = torch.unique(last_index, return_inverse=True)  # only the distinct last positions
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep, use_cache=False).logits
    return out[rows_index, where][:, digit_ids].float()


def score_token_ids(
    model: Any,
    token_ids: Sequence[Sequence[int]],
    digit_ids: Sequence[int],
    *,
    batch_size: int = 16,
    padding_side: str = "left",
    pad_token_id: int = 0,
) -> np.ndarray:
    """Expected scores (float64) of already-tokenized prompts, in input order; NaN where logits were not finite.

    Batches are cut from the prompts sorted by length (longest first, stable), so a given list of
    prompts always gives the same batches, hence bitwise the same results on the same hardware.
    """
    import torch

    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    for i, r in enumerate(token_ids):
        if len(r) == 0:
            raise ScoringError(f"prompt {i} has no tokens")
    out = np.full(len(token_ids), np.nan, dtype=np.float64)
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
    digit_idx = torch.tensor(list(digit_ids), dtype=torch.long, device=model.device)
    with torch.inference_mode():
        head = _digit_head(model, digit_idx)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            logits = _batch_logits(
                model, [list(token_ids[i]) for i in idx], digit_idx, padding_side, pad_token_id, head
            )
            out[idx] = expected_from_logits(logits.double().cpu().numpy())
    return out


def expected_from_logits(logits: np.ndarray) -> np.ndarray:
    """sum_i i * softmax(logits)_i over the last axis of six digit logits; NaN for a row that is not finite."""
    logits = np.asarray(logits, dtype=np.float64)
    finite = np.isfinite(logits).all(axis=-1)
    safe = np.where(finite[..., None], logits, 0.0)
    z = np.exp(safe - safe.max(axis=-1, keepdims=True))
    scores = (z / z.sum(axis=-1, keepdims=True)) @ _SCORE_VALUES
    return np.where(finite, scores, np.nan)


def expected_scores(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    batch_size: int = 16,
    *,
    padding_side: str = "left",
) -> list[float]:
    """Expected Deita score of each already-rendered scorer prompt (input order); raises if any is not finite."""
    digit_ids = digit_token_ids(tokenizer)
    ids = encode_prompts(tokenizer, prompts)
    scores = score_token_ids(
        model, ids, digit_ids, batch_size=batch_size, padding_side=padding_side, pad_token_id=_pad_id(tokenizer)
    )
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise ScoringError(f"non-finite digit logits for prompt(s) {bad[:10].tolist()}: cannot score them")
    return scores.tolist()


def _pad_id(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


# ---------------------------------------------------------------------------------- truncation


@dataclass
class TurnPrompt:
    """One rendered, tokenized scorer prompt; ``n_tokens_full`` is its length before any truncation."""

    token_ids: list[int]
    truncated: bool
    n_tokens_full: int


class PromptBuilder:
    """Renders the exact scorer prompts and fits them into ``max_length`` tokens (module docstring: policy)."""

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = DEFAULT_MAX_LENGTH,
        truncation: str = "head_tail",
        instruction_share: float = 1 / 3,
        marker: str = TRUNCATION_MARKER,
    ) -> None:
        if truncation not in TRUNCATION_POLICIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {truncation!r}")
        if not 0 < instruction_share < 1:
            raise ValueError("instruction_share must be in (0, 1)")
        if truncation == "head_tail" and not getattr(tokenizer, "is_fast", False):
            raise ValueError("truncation='head_tail' needs a fast tokenizer (character offsets)")
        self.tokenizer, self.max_length, self.truncation = tokenizer, max_length, truncation
        self.instruction_share, self.marker = instruction_share, marker
        self._marker_tokens = len(self._offsets(marker))

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        return self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]

    def _head(self, text: str, k: int) -> str:
        offs = self._offsets(text)
        return text if k >= len(offs) else ("" if k <= 0 else text[: offs[k][0]])

    def _tail(self, text: str, k: int) -> str:
        offs = self._offsets(text)
        return text if k >= len(offs) else ("" if k <= 0 else text[offs[len(offs) - k][0] :])

    def _head_tail(self, text: str, k: int) -> str:
        avail = k - self._marker_tokens
        if avail < 3:
            return self._head(text, k)
        head = (2 * avail + 2) // 3
        return self._head(text, head).rstrip() + self.marker + self._tail(text, avail - head).lstrip()

    def _too_long(self, kind: str, n: int) -> None:
        if self.truncation == "reject":
            raise PromptTooLongError(f"{kind} prompt has {n} tokens, over max_length={self.max_length}")

    def complexity(self, instruction: str) -> TurnPrompt:
        ids = encode_prompt(self.tokenizer, complexity_prompt(instruction))
        if len(ids) <= self.max_length:
            return TurnPrompt(ids, False, len(ids))
        self._too_long("complexity", len(ids))
        budget = self.max_length - (len(ids) - len(self._offsets(instruction)))
        for _ in range(8):
            cut = self._head(instruction, budget)
            if budget < 1 or not cut.strip():
                raise ScoringError(f"max_length={self.max_length} leaves no room for the instruction")
            new = encode_prompt(self.tokenizer, complexity_prompt(cut))
            if len(new) <= self.max_length:
                return TurnPrompt(new, True, len(ids))
            budget -= len(new) - self.max_length
        raise ScoringError(f"could not fit the complexity prompt into {self.max_length} tokens")

    def quality(self, instruction: str, output: str) -> TurnPrompt:
        ids = encode_prompt(self.tokenizer, quality_prompt(instruction, output))
        if len(ids) <= self.max_length:
            return TurnPrompt(ids, False, len(ids))
        self._too_long("quality", len(ids))
        n_in, n_out = len(self._offsets(instruction)), len(self._offsets(output))
        content = self.max_length - (len(ids) - n_in - n_out)
        for _ in range(8):
            b_in = min(n_in, max(content - n_out, int(content * self.instruction_share)))
            b_out = content - b_in
            if b_in < 1 or (n_out and b_out < 1):
                raise ScoringError(f"max_length={self.max_length} leaves no room for the instruction and response")
            cut_in = instruction if b_in >= n_in else self._head(instruction, b_in)
            cut_out = output if b_out >= n_out else self._head_tail(output, b_out)
            if not cut_in.strip():
                raise ScoringError("nothing of the instruction left after truncation")
            new = encode_prompt(self.tokenizer, quality_prompt(cut_in, cut_out))
            if len(new) <= self.max_length:
                return TurnPrompt(new, True, len(ids))
            content -= len(new) - self.max_length
        raise ScoringError(f"could not fit the quality prompt into {self.max_length} tokens")


# -------------------------------------------------------------------------------------- scorer


@dataclass
class Scorer:
    """A loaded scorer model with its tokenizer, digit ids and prompt builder (HF or vLLM backend)."""

    name: str
    tokenizer: Any
    builder: PromptBuilder
    digit_ids: list[int]
    model: Any = None
    vllm: Any = None
    batch_size: int = 16
    padding_side: str = "left"

    @classmethod
    def load(
        cls,
        path: str,
        *,
        max_length: int = DEFAULT_MAX_LENGTH,
        truncation: str = "head_tail",
        instruction_share: float = 1 / 3,
        batch_size: int = 16,
        padding_side: str = "left",
        device: Any = None,
        dtype: str = "auto",
        backend: str = "hf",
    ) -> Scorer:
        """Load a scorer checkpoint (local dir or Hub id) once; bf16 on GPU, fp32 on CPU by default."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        builder = PromptBuilder(tokenizer, max_length, truncation, instruction_share)
        digit_ids = digit_token_ids(tokenizer)
        device = (
            torch.device(device)
            if device is not None
            else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        )
        if device.type == "cpu":
            # accelerate says cpu:0 under torchrun; moving the model there copies its weights, and the copies
            # gave float32 results differing in the last bits (seen): one CPU device for every launch
            device = torch.device("cpu")
        if dtype == "auto":
            dtype = "bfloat16" if device.type == "cuda" else "float32"
        if backend == "vllm":
            from deita_train.vllm_backend import VllmScorer

            engine = VllmScorer(path, max_length=max_length, dtype=dtype)
            return cls(path, tokenizer, builder, digit_ids, vllm=engine, batch_size=batch_size)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
        return cls(path, tokenizer, builder, digit_ids, model=model, batch_size=batch_size, padding_side=padding_side)

    def score_ids(self, token_ids: Sequence[Sequence[int]]) -> np.ndarray:
        if self.vllm is not None:
            return self.vllm.score_token_ids(token_ids, self.digit_ids)
        return score_token_ids(
            self.model,
            token_ids,
            self.digit_ids,
            batch_size=self.batch_size,
            padding_side=self.padding_side,
            pad_token_id=_pad_id(self.tokenizer),
        )


# ------------------------------------------------------------------------------------- records


def score_records(
    records: Sequence[dict[str, Any]],
    complexity: Scorer | None = None,
    quality: Scorer | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Score validated conversation records per turn; returns (scored records, rejects), both in input order.

    A scored record is the input plus ``{kind}_scores`` and ``{kind}_truncated`` (one entry per
    `turn_pairs` pair) for each scorer given. A record with any turn that cannot be scored is
    rejected as a whole, with the turn, the scorer and the reason.
    """
    scorers = {k: s for k, s in (("complexity", complexity), ("quality", quality)) if s is not None}
    if not scorers:
        raise ValueError("give at least one of complexity= or quality=")
    rejects: dict[int, dict[str, Any]] = {}
    prompts: dict[str, list[tuple[int, TurnPrompt]]] = {k: [] for k in scorers}
    for ri, rec in enumerate(records):
        pairs = turn_pairs(rec)
        built: dict[str, list[TurnPrompt]] = {}
        try:
            for kind, scorer in scorers.items():
                built[kind] = []
                for ti, (human, gpt) in enumerate(pairs):
                    try:
                        tp = (
                            scorer.builder.complexity(human)
                            if kind == "complexity"
                            else scorer.builder.quality(human, gpt)
                        )
                    except ScoringError as e:
                        raise ScoringError(f"turn {ti}: {e}") from e
                    built[kind].append(tp)
        except ScoringError as e:
            rejects[ri] = _reject(rec, kind, str(e))
            continue
        for kind, tps in built.items():
            prompts[kind].extend((ri, tp) for tp in tps)

    results: dict[str, dict[int, list[tuple[float, bool]]]] = {}
    for kind, items in prompts.items():
        scores = scorers[kind].score_ids([tp.token_ids for _, tp in items]) if items else np.empty(0)
        per: dict[int, list[tuple[float, bool]]] = {}
        for (ri, tp), s in zip(items, scores.tolist()):
            per.setdefault(ri, []).append((s, tp.truncated))
        results[kind] = per

    scored = []
    for ri, rec in enumerate(records):
        if ri in rejects:
            continue
        out = dict(rec)
        for kind in scorers:
            turns = results[kind][ri]
            bad = [ti for ti, (s, _) in enumerate(turns) if not math.isfinite(s)]
            if bad:
                rejects[ri] = _reject(rec, kind, f"turn {bad[0]}: non-finite digit logits, no score")
                break
            out[f"{kind}_scores"] = [s for s, _ in turns]
            out[f"{kind}_truncated"] = [t for _, t in turns]
        if ri not in rejects:
            scored.append(out)
    return scored, [rejects[ri] for ri in sorted(rejects)]


def _reject(rec: dict[str, Any], scorer: str, reason: str) -> dict[str, Any]:
    return {"id": rec["id"], "stage": "score", "scorer": scorer, "reason": reason, "record": rec}


# ------------------------------------------------------------------------------------ pool job


@dataclass
class ScoreConfig:
    """Recipe of one scoring run (``data_prep/score.py --config recipes/score/....yaml``)."""

    input_path: str = field(metadata={"help": "pool: .json / .jsonl / .parquet / saved dataset / Hub dataset id"})
    output_dir: str = field(metadata={"help": "writes scored.jsonl, rejects.jsonl, manifest.json, chunks/"})
    complexity_model: str | None = field(default=None, metadata={"help": "complexity scorer dir or Hub id"})
    quality_model: str | None = field(default=None, metadata={"help": "quality scorer dir or Hub id"})
    split: str | None = field(default=None, metadata={"help": "dataset split for a Hub id or DatasetDict"})
    max_length: int = field(default=DEFAULT_MAX_LENGTH, metadata={"help": "scorer context in tokens"})
    truncation: str = field(default="head_tail", metadata={"help": "head_tail (truncate and flag) or reject"})
    instruction_share: float = field(default=1 / 3, metadata={"help": "quality: instruction's budget share"})
    batch_size: int = field(default=16, metadata={"help": "prompts per forward pass"})
    chunk_size: int = field(default=512, metadata={"help": "records per resumable chunk file"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 on GPU, fp32 on CPU), float32, bfloat16"})
    padding_side: str = field(default="left", metadata={"help": "left or right (same scores)"})
    backend: str = field(default="auto", metadata={"help": "auto (vLLM if installed on GPU), hf, vllm"})

    def __post_init__(self) -> None:
        if not (self.complexity_model or self.quality_model):
            raise ValueError("set complexity_model and/or quality_model")
        if self.truncation not in TRUNCATION_POLICIES:
            raise ValueError(f"truncation must be one of {TRUNCATION_POLICIES}, got {self.truncation!r}")
        if self.backend not in ("auto", "hf", "vllm"):
            raise ValueError(f"backend must be auto, hf or vllm, got {self.backend!r}")


def _model_identity(path: str) -> dict[str, Any]:
    """What makes a scorer itself: a local dir's config hash and file sizes, or the Hub id."""
    from deita_train.jsonl import file_sha256

    p = Path(path)
    if not p.is_dir():
        return {"hub_id": path}
    files = sorted((str(f.relative_to(p)), f.stat().st_size) for f in p.rglob("*") if f.is_file())
    cfg = p / "config.json"
    return {"path": str(p.resolve()), "files": files, "config_sha256": file_sha256(cfg) if cfg.exists() else None}


def _resolve_backend(backend: str, world_size: int) -> str:
    """auto: vLLM when installed on a GPU machine and launched as one process (vLLM places itself on the GPUs)."""
    if backend == "vllm" and world_size > 1:
        raise ValueError("backend 'vllm' runs in one process (it manages the GPUs itself); launch without accelerate")
    if backend != "auto":
        return backend
    from deita_train.vllm_backend import vllm_available

    return "vllm" if world_size == 1 and vllm_available() else "hf"


def score_pool(config: ScoreConfig) -> dict[str, Any]:
    """Score a pool across the launched processes, resumably; the main process merges. Returns the counts.

    Records are ordered by length (longest first) and cut into chunks of ``chunk_size``; chunk k
    goes to rank ``k % world``. Each finished chunk is one atomic file (`deita_train.sharded`), so a
    killed run started again redoes only the missing chunks, with any number of processes. A chunk
    is always scored in the same batches, so its scores do not depend on the run or the world size.
    """
    from tqdm.auto import tqdm

    from deita_train.jsonl import file_sha256, read_jsonl, write_jsonl
    from deita_train.manifest import write_manifest
    from deita_train.sharded import ShardedJob, dist_info, fingerprint

    dist = dist_info()
    out_dir = Path(config.output_dir)
    backend = _resolve_backend(config.backend, dist.world_size)
    records, report = load_conversations_with_report(config.input_path, config.split, strict=False)
    by_id = {r["id"]: r for r in records}
    size = {r["id"]: sum(len(t["value"]) for t in r["conversations"]) for r in records}
    work = sorted(by_id, key=lambda rid: -size[rid])  # stable: ties keep pool order
    models = {k: getattr(config, f"{k}_model") for k in SCORE_KINDS if getattr(config, f"{k}_model")}
    src = Path(config.input_path)
    fp = fingerprint(
        file_sha256(src) if src.exists() else config.input_path,
        config.split,
        {k: _model_identity(v) for k, v in models.items()},
        config.max_length,
        config.truncation,
        config.instruction_share,
        config.dtype,
        config.padding_side,
        backend,
    )  # batch_size is left out on purpose: a rerun after an out-of-memory crash may lower it
    job = ShardedJob(out_dir, work, config.chunk_size, fp)
    job.prepare(dist)

    pending = job.pending(dist.rank, dist.world_size)
    if pending:
        device = getattr(dist.state, "device", None)
        loaded: dict[str, Scorer] = {}
        for path in dict.fromkeys(models.values()):
            logger.info("rank %d: loading scorer %s (%s)", dist.rank, path, backend)
            loaded[path] = Scorer.load(
                path,
                max_length=config.max_length,
                truncation=config.truncation,
                instruction_share=config.instruction_share,
                batch_size=config.batch_size,
                padding_side=config.padding_side,
                device=device,
                dtype=config.dtype,
                backend=backend,
            )
        scorers = {k: loaded[v] for k, v in models.items()}
        for k in tqdm(pending, desc=f"scoring (rank {dist.rank})", unit="chunk", disable=not dist.is_main):
            chunk = [by_id[rid] for rid in job.chunk_ids(k)]
            scored, rejected = score_records(chunk, scorers.get("complexity"), scorers.get("quality"))
            lines = [{"id": r["id"], "scored": r} for r in scored] + [{"id": r["id"], "rejected": r} for r in rejected]
            write_jsonl(job.chunk_path(k), lines)
    dist.barrier()

    manifest_path = out_dir / "manifest.json"
    if dist.is_main:
        results: dict[str, dict[str, Any]] = {}
        for k in range(job.n_chunks):
            expected = job.chunk_ids(k)
            lines = read_jsonl(job.chunk_path(k))
            got = [line["id"] for line in lines]
            if sorted(got) != sorted(expected):
                raise RuntimeError(f"{job.chunk_path(k)} does not hold exactly the ids of chunk {k}")
            for line in lines:
                if line["id"] in results:
                    raise RuntimeError(f"id {line['id']!r} appears in more than one chunk")
                results[line["id"]] = line
        if set(results) != set(by_id):
            raise RuntimeError(f"merged chunks hold {len(results)} ids, the pool {len(by_id)}")
        scored = [results[r["id"]]["scored"] for r in records if "scored" in results[r["id"]]]
        score_rejects = [results[r["id"]]["rejected"] for r in records if "rejected" in results[r["id"]]]
        load_rejects = [{"stage": "load", **rej} for rej in report.rejects]
        counts = {
            "in": report.n_in,
            "scored": len(scored),
            "rejected": len(load_rejects) + len(score_rejects),
            "rejected_load": len(load_rejects),
            "rejected_score": len(score_rejects),
            "turns_scored": sum(len(turn_pairs(r)) for r in scored),
        }
        for kind in models:
            counts[f"{kind}_truncated_turns"] = sum(sum(r[f"{kind}_truncated"]) for r in scored)
        if counts["in"] != counts["scored"] + counts["rejected"]:
            raise RuntimeError(f"counts do not add up: {counts}")
        write_jsonl(out_dir / "scored.jsonl", scored)
        write_jsonl(out_dir / "rejects.jsonl", load_rejects + score_rejects)
        write_manifest(
            manifest_path,
            step="score",
            config=config,
            inputs=[config.input_path],
            outputs=[out_dir / "scored.jsonl", out_dir / "rejects.jsonl"],
            counts=counts,
            extra={
                "scorer": {k: {"model": v, "identity": _model_identity(v)} for k, v in models.items()},
                "backend": backend,
                "world_size": dist.world_size,
                "fingerprint": fp,
                "truncation": {
                    "policy": config.truncation,
                    "max_length": config.max_length,
                    "instruction_share": config.instruction_share,
                    "marker": TRUNCATION_MARKER,
                },
                "load_report": report.as_dict(),
            },
        )
        logger.info(
            "scored %d of %d records (%d rejected) -> %s", len(scored), report.n_in, counts["rejected"], out_dir
        )
    dist.barrier()
    return json.loads(manifest_path.read_text())["counts"]


__all__ = [
    "DEFAULT_MAX_LENGTH",
    "TRUNCATION_MARKER",
    "PromptBuilder",
    "PromptTooLongError",
    "ScoreConfig",
    "Scorer",
    "ScoringError",
    "TurnPrompt",
    "digit_token_ids",
    "encode_prompt",
    "expected_from_logits",
    "expected_scores",
    "score_pool",
    "score_records",
    "score_token_ids",
]
