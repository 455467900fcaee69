"""UltraFeedback preference pairs for DPO, rendered with the SFT template (vicuna_v1.1).

Deita's DPO step trains on 10K pairs drawn at random from ``HuggingFaceH4/ultrafeedback_binarized``
(split ``train_prefs``) by ``random.seed(42); random.sample(range(len(data)), N)``.

Sampling. The first N candidates are exactly the original's ``random.sample`` indices, in its
order. Pairs that fail a check are replaced by walking on: replacements come, in order, from a
seeded permutation of all rows (``random.seed(seed); random.sample(range(n), n)``), skipping rows
already drawn. When n <= 21 + 4**ceil(log4(3N)) Python draws both samples the same way, so the
permutation's first N entries are the original sample and the whole walk is one permutation
(true for train_prefs: n = 61,135 rows, N = 10,000). With ``refill: false`` rejected pairs are
simply dropped, leaving fewer than N, as the original would have.

Rendering. For prompt turns P (everything before the final assistant message, optional system
turn first) and reply R::

    prompt   = render_conversation(P, add_generation_prompt=True)   # "... USER: q ASSISTANT:"
    chosen   = render_conversation(P + [R])[len(prompt):]           # " R</s>"

so ``prompt + chosen`` is exactly the SFT rendering of the same conversation and the DPO prompt is
the SFT text up to the reply. The original's sample_ultrafeedback.py rendered
``"{system} user: {prompt} "`` and ``"assistant: {reply}</s>"``: lowercase role names where SFT
used ``USER:``/``ASSISTANT:``, so DPO trained on a prompt format the SFT model had never seen.
That is a bug and is not reproduced.

Rows. ultrafeedback_binarized rows hold ``chosen`` and ``rejected`` as full message lists (the
prompt turns, then the reply); the prompt turns must be equal in both. Rows whose ``chosen`` and
``rejected`` hold only the reply (a string, or one assistant message) take the prompt from
``prompt`` (a string, or a messages list as in TRL's explicit-prompt format). The pair's id is
``prompt_id`` (``row-<index>`` without one; ``<prompt_id>#<index>`` when a prompt id repeats).

Checks, each a reject reason with a count: ``malformed_messages`` (not a list of role/content
messages, last message not from the assistant, bad roles or turn order), ``prompt_mismatch`` (the
chosen and rejected conversations differ before the reply), ``empty_text``,
``identical_chosen_rejected`` (same reply after stripping whitespace), ``prompt_too_long`` (over
``max_prompt_tokens``) and ``pair_too_long`` (prompt + the longer reply over ``max_length``).
Lengths are counted the way TRL's DPOTrainer tokenizes (``tokenizer(prompt + reply)``, BOS
included) with the tokenizer given by ``tokenizer_name_or_path``; without a tokenizer both budgets
are counted in characters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from deita_train.conversations import ConversationError, validate_record
from deita_train.jsonl import read_jsonl, write_jsonl
from deita_train.manifest import write_manifest
from deita_train.templates import render_conversation


logger = logging.getLogger(__name__)

REASONS = (
    "malformed_messages",
    "prompt_mismatch",
    "empty_text",
    "identical_chosen_rejected",
    "prompt_too_long",
    "pair_too_long",
)
_CHUNK = 256
_MESSAGE_FIELD = re.compile(r"^messages\[(\d+)\](.*)$")


@dataclass
class UltraFeedbackConfig:
    """Recipe for one preference-pair sample (see recipes/data/ultrafeedback-10k.yaml)."""

    dataset_name: str = field(
        default="HuggingFaceH4/ultrafeedback_binarized",
        metadata={"help": "Hub id, local .jsonl/.json/.parquet or saved dataset; 'demo:N' writes N demo rows."},
    )
    split: str = field(default="train_prefs", metadata={"help": "Split to sample from."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (pin it: the sample depends on it)."})
    output_dir: str = field(
        default="runs/ultrafeedback-10k", metadata={"help": "Writes pairs.jsonl, rejects.jsonl, manifest.json."}
    )
    num_samples: int = field(default=10_000, metadata={"help": "Pairs to keep (N)."})
    seed: int = field(default=42, metadata={"help": "random.seed for the sample (the original used 42)."})
    refill: bool = field(default=True, metadata={"help": "Replace rejected pairs by walking the seeded permutation."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer for the length budgets; without one they count characters."}
    )
    max_prompt_tokens: int | None = field(default=512, metadata={"help": "Reject prompts longer than this."})
    max_length: int | None = field(default=2048, metadata={"help": "Reject pairs whose prompt + reply is longer."})

    def __post_init__(self) -> None:
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        for key in ("max_prompt_tokens", "max_length"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be positive or null, got {value}")


# --------------------------------------------------------------------------- sampling


def original_sample_indices(n: int, num_samples: int, seed: int = 42) -> list[int]:
    """The original's draw: ``random.seed(seed); random.sample(range(n), num_samples)`` (global state untouched)."""
    return random.Random(seed).sample(range(n), num_samples)


def permutation_prefix_matches(n: int, num_samples: int) -> bool:
    """Whether `random.sample(range(n), num_samples)` is the prefix of `random.sample(range(n), n)` (same seed).

    Python draws small samples from a set and large ones from a shuffled pool list; both draws use the
    pool method, and so agree on their first `num_samples` items, when n <= 21 + 4**ceil(log4(3 k)).
    """
    setsize = 21 + (4 ** math.ceil(math.log(3 * num_samples, 4)) if num_samples > 5 else 0)
    return n <= setsize


def candidate_order(n: int, num_samples: int, seed: int = 42, refill: bool = True) -> Iterator[int]:
    """Row indices to try, in order: the original's sample first, then (refill) the rest of a seeded permutation."""
    first = original_sample_indices(n, min(num_samples, n), seed)
    yield from first
    if not refill:
        return
    drawn = set(first)
    for i in random.Random(seed).sample(range(n), n):
        if i not in drawn:
            yield i


# --------------------------------------------------------------------------- one row -> one pair


class PairError(ValueError):
    """A row that cannot become a pair: a reason code from `REASONS`, a detail and the field."""

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        self.reason, self.detail, self.field = reason, detail, field
        super().__init__(f"{reason}: {detail}" + (f" (field {field!r})" if field else ""))


def _check_messages(value: Any, key: str) -> list[dict[str, str]]:
    """`value` as a list of role/content messages (extra keys dropped), or a `PairError` naming the field."""
    if not isinstance(value, list) or not value:
        raise PairError("malformed_messages", f"must be a non-empty list of messages, got {value!r:.80}", key)
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise PairError("malformed_messages", "each message needs a role and a content", f"{key}[{i}]")
        if not isinstance(m["content"], str):
            raise PairError(
                "malformed_messages",
                f"content must be a string, got {type(m['content']).__name__}",
                f"{key}[{i}].content",
            )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _messages(row: dict[str, Any], key: str) -> tuple[list[dict[str, str]], str]:
    """Prompt messages and reply text of `row[key]`: a messages list ending in the assistant reply, or a string."""
    value = row.get(key)
    if isinstance(value, str):  # a bare reply: the prompt comes from the `prompt` field
        return [], value
    value = _check_messages(value, key)
    last = value[-1]
    if last["role"] != "assistant":
        raise PairError(
            "malformed_messages",
            f"last message must be the assistant reply, got {last['role']!r}",
            f"{key}[{len(value) - 1}].role",
        )
    return value[:-1], last["content"]


def _prompt_turns(row: dict[str, Any]) -> tuple[list[dict[str, Any]], str, str, bool]:
    """Prompt turns, chosen and rejected reply texts, and whether the prompt came from the `prompt` field."""
    chosen_prompt, chosen = _messages(row, "chosen")
    rejected_prompt, rejected = _messages(row, "rejected")
    if chosen_prompt != rejected_prompt:
        raise PairError("prompt_mismatch", "chosen and rejected differ before the final reply", "rejected")
    if chosen_prompt:
        return chosen_prompt, chosen, rejected, False
    prompt = row.get("prompt")  # replies alone: the prompt is a string or a messages list (TRL's explicit prompt)
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}], chosen, rejected, True
    if isinstance(prompt, list):
        return _check_messages(prompt, "prompt"), chosen, rejected, True
    raise PairError("malformed_messages", "no prompt messages and no 'prompt' string or list", "prompt")


def _turn_field(i: int, suffix: str, prompt: list[dict[str, str]], from_prompt_field: bool) -> str:
    """The row field of message `i` of the chosen conversation (prompt turns, then the reply)."""
    if not from_prompt_field:
        return f"chosen[{i}]{suffix}"
    if i >= len(prompt):
        return "chosen"
    return "prompt" if len(prompt) == 1 else f"prompt[{i}]{suffix}"


def _check_empty(prompt: list[dict[str, Any]], chosen: str, rejected: str, from_prompt_field: bool) -> None:
    for i, m in enumerate(prompt):
        if not m["content"].strip():
            raise PairError(
                "empty_text",
                f"prompt message {i} ({m['role']}) is empty",
                _turn_field(i, ".content", prompt, from_prompt_field),
            )
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise PairError("empty_text", f"the {key} reply is empty", key)


def render_pair(prompt_turns: Sequence[dict[str, Any]], chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen, rejected) strings with vicuna_v1.1, so prompt + chosen is the SFT rendering."""
    prompt = render_conversation(prompt_turns, add_generation_prompt=True)
    completions = []
    for reply in (chosen, rejected):
        full = render_conversation([*prompt_turns, {"role": "assistant", "content": reply}])
        if not full.startswith(prompt):  # the template guarantees this; fail loudly if it ever stops
            raise AssertionError("vicuna_v1.1: the rendered prompt is not a prefix of the rendered conversation")
        completions.append(full[len(prompt) :])
    return prompt, completions[0], completions[1]


def make_pair(row: Any, index: int) -> dict[str, Any]:
    """One UltraFeedback row -> ``{"id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected"}``.

    Raises `PairError` with a reason from `REASONS` (the length budgets are checked separately).
    """
    if not isinstance(row, dict):
        raise PairError("malformed_messages", f"row must be an object, got {type(row).__name__}")
    prompt_turns, chosen, rejected, from_prompt_field = _prompt_turns(row)
    _check_empty(prompt_turns, chosen, rejected, from_prompt_field)
    if chosen.strip() == rejected.strip():
        raise PairError("identical_chosen_rejected", "chosen and rejected replies are the same text", "rejected")
    try:  # roles and turn order, by the project's one set of conversation rules (the prompts are equal)
        validate_record({"id": "pair", "messages": [*prompt_turns, {"role": "assistant", "content": chosen}]})
    except ConversationError as e:
        m = _MESSAGE_FIELD.match(e.field or "")
        suffix = ".role" if m and m[2] == ".from" else (m[2] if m else "")
        fld = _turn_field(int(m[1]), suffix, prompt_turns, from_prompt_field) if m else e.field
        raise PairError("malformed_messages", e.reason, fld) from None
    prompt, chosen_text, rejected_text = render_pair(prompt_turns, chosen, rejected)
    prompt_id = row.get("prompt_id")
    return {
        "id": str(prompt_id) if isinstance(prompt_id, (str, int)) and str(prompt_id).strip() else f"row-{index}",
        "prompt": prompt,
        "chosen": chosen_text,
        "rejected": rejected_text,
        "score_chosen": row.get("score_chosen"),
        "score_rejected": row.get("score_rejected"),
    }


# --------------------------------------------------------------------------- lengths


class LengthCounter:
    """Counts lengths in tokens (BOS included, as TRL tokenizes) with a tokenizer, else in characters."""

    def __init__(self, tokenizer_name_or_path: str | None = None) -> None:
        self.tokenizer = None
        self.unit = "chars"
        if tokenizer_name_or_path:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_name_or_path)
            self.unit = "tokens"

    def __call__(self, texts: list[str]) -> list[int]:
        if not texts:
            return []
        if self.tokenizer is None:
            return [len(t) for t in texts]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]


# --------------------------------------------------------------------------- loading


def load_rows(dataset_name: str, split: str, revision: str | None = None) -> Sequence[dict[str, Any]]:
    """Rows with random access: a local .jsonl/.json/.parquet, a saved dataset, or a Hub dataset split."""
    path = Path(dataset_name)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            return read_jsonl(path)
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8-sig"))
            if isinstance(data, dict) and split in data:
                data = data[split]
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON array of rows (or an object keyed by split)")
            return data
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json or .parquet")
    import datasets

    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        return ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    if path.suffix.lower() in (".json", ".jsonl", ".parquet") or dataset_name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{dataset_name} does not exist")
    return datasets.load_dataset(dataset_name, split=split, revision=revision)


# --------------------------------------------------------------------------- sampling run


def select_pairs(
    rows: Sequence[dict[str, Any]],
    num_samples: int,
    *,
    seed: int = 42,
    refill: bool = True,
    lengths: LengthCounter | None = None,
    max_prompt_tokens: int | None = None,
    max_length: int | None = None,
    source: str = "ultrafeedback",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Walk the seeded candidate order until `num_samples` pairs pass every check.

    Returns (pairs in sampling order, rejects, counts); ``sampled == kept + rejected``.
    """
    n = len(rows)
    if num_samples > n:
        logger.warning("%s: %d pairs requested but the split has %d rows; sampling all", source, num_samples, n)
    lengths = lengths or LengthCounter()
    order = candidate_order(n, num_samples, seed, refill)
    pairs: list[dict[str, Any]] = []
    kept_indices: list[int] = []
    rejects: list[dict[str, Any]] = []
    reasons: Counter[str] = Counter()
    used_ids: set[str] = set()
    sampled = renamed = 0
    target = min(num_samples, n)
    bar = tqdm(total=target, desc=f"{source} pairs", unit="pair", mininterval=1.0)
    while len(pairs) < target:
        chunk = list(islice(order, max(16, min(_CHUNK, target - len(pairs)))))
        if not chunk:
            break
        verdicts: list[dict[str, Any] | PairError] = []
        for i in chunk:
            try:
                verdicts.append(make_pair(rows[i], i))
            except PairError as e:
                verdicts.append(e)
        ok = [v for v in verdicts if isinstance(v, dict)]
        prompt_len = lengths([p["prompt"] for p in ok])
        chosen_len = lengths([p["prompt"] + p["chosen"] for p in ok])
        rejected_len = lengths([p["prompt"] + p["rejected"] for p in ok])
        sized = iter(zip(ok, prompt_len, chosen_len, rejected_len))
        for i, verdict in zip(chunk, verdicts):
            if len(pairs) >= target:
                break
            sampled += 1
            if isinstance(verdict, dict):
                pair, p_len, c_len, r_len = next(sized)
                if max_prompt_tokens is not None and p_len > max_prompt_tokens:
                    verdict = PairError(
                        "prompt_too_long", f"prompt is {p_len} {lengths.unit} > {max_prompt_tokens}", "prompt"
                    )
                elif max_length is not None and max(c_len, r_len) > max_length:
                    verdict = PairError(
                        "pair_too_long",
                        f"prompt + reply is {max(c_len, r_len)} {lengths.unit} > {max_length}",
                        "chosen" if c_len >= r_len else "rejected",
                    )
            if isinstance(verdict, PairError):
                reasons[verdict.reason] += 1
                row = rows[i]
                rid = row.get("prompt_id") if isinstance(row, dict) else None
                rejects.append(
                    {
                        "source": source,
                        "index": i,
                        "id": rid,
                        "field": verdict.field,
                        "reason": verdict.reason,
                        "detail": verdict.detail,
                    }
                )
                continue
            if pair["id"] in used_ids:  # the same prompt twice: keep both pairs, with distinct ids
                pair["id"] = f"{pair['id']}#{i}"
                renamed += 1
            used_ids.add(pair["id"])
            pairs.append(pair)
            kept_indices.append(i)
            bar.update(1)
    bar.close()
    if len(pairs) < num_samples:
        logger.warning(
            "%s: kept %d of %d requested pairs (%d rows, %d rejected)",
            source,
            len(pairs),
            num_samples,
            n,
            sum(reasons.values()),
        )
    original = original_sample_indices(n, target, seed)
    in_original = set(original)
    counts = {
        "rows": n,
        "requested": num_samples,
        "sampled": sampled,
        "kept": len(pairs),
        "rejected": sum(reasons.values()),
        "rejected_by_reason": {r: reasons[r] for r in REASONS if reasons[r]},
        "refilled": sum(1 for i in kept_indices if i not in in_original),
        "ids_disambiguated": renamed,
        "same_as_original_sample": kept_indices == original,
        "permutation_prefix_is_original_sample": permutation_prefix_matches(n, target),
        "length_unit": lengths.unit,
    }
    assert counts["sampled"] == counts["kept"] + counts["rejected"]
    return pairs, rejects, counts


def sample_ultrafeedback(config: UltraFeedbackConfig) -> dict[str, Any]:
    """Sample, check and render preference pairs; write pairs.jsonl, rejects.jsonl and manifest.json.

    Returns the counts written to the manifest.
    """
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset_name = config.dataset_name
    if dataset_name.startswith("demo:"):
        dataset_name = str(
            write_demo_ultrafeedback(out / "demo-ultrafeedback.jsonl", int(dataset_name.split(":", 1)[1]))
        )
    rows = load_rows(dataset_name, config.split, config.revision)
    lengths = LengthCounter(config.tokenizer_name_or_path)
    if lengths.unit == "chars":
        logger.warning("no tokenizer given: max_prompt_tokens and max_length are counted in characters")
    source = f"{config.dataset_name}[{config.split}]"
    pairs, rejects, counts = select_pairs(
        rows,
        config.num_samples,
        seed=config.seed,
        refill=config.refill,
        lengths=lengths,
        max_prompt_tokens=config.max_prompt_tokens,
        max_length=config.max_length,
        source=source,
    )
    pairs_path, rejects_path = out / "pairs.jsonl", out / "rejects.jsonl"
    write_jsonl(pairs_path, pairs)
    write_jsonl(rejects_path, rejects)
    write_manifest(
        out / "manifest.json",
        step="sample_ultrafeedback",
        config=config,
        inputs=[dataset_name] if Path(dataset_name).exists() else [],
        outputs=[pairs_path, rejects_path],
        counts=counts,
        extra={
            "template": "vicuna_v1.1",
            "dataset": {"name": config.dataset_name, "split": config.split, "revision": config.revision},
        },
    )
    logger.info(
        "%s: kept %d pairs (%d sampled, %d rejected) -> %s",
        source,
        counts["kept"],
        counts["sampled"],
        counts["rejected"],
        pairs_path,
    )
    return counts


# --------------------------------------------------------------------------- demo data

_DEMO_SUBJECTS = (
    "a rain barrel",
    "a compost heap",
    "a sundial",
    "a paper kite",
    "a bird feeder",
    "a herb window box",
    "a pinhole camera",
    "a bread oven",
)
_DEMO_ASKS = (
    "How do I look after {s} through the winter?",
    "What should I check before building {s}?",
    "Explain in two sentences why {s} is worth having.",
    "What is the most common problem with {s}, and how do I fix it?",
)


def demo_ultrafeedback_rows(n: int) -> list[dict[str, Any]]:
    """`n` project-written rows in the ultrafeedback_binarized schema (no dataset text).

    Every tenth row has identical chosen and rejected replies, as real preference data
    occasionally does, so the sampler's reject-and-refill path runs in the demo.
    """
    rows = []
    for i in range(n):
        subject = _DEMO_SUBJECTS[i % len(_DEMO_SUBJECTS)]
        ask = _DEMO_ASKS[(i // len(_DEMO_SUBJECTS)) % len(_DEMO_ASKS)]
        prompt = ask.format(s=subject) + (f" (question {i})" if i >= len(_DEMO_SUBJECTS) * len(_DEMO_ASKS) else "")
        good = (
            f"Here is a careful answer about {subject}. First, look at where it stands and what it is exposed to. "
            f"Second, check it regularly, small problems are easy to fix early. Third, keep notes so next season is easier."
        )
        weak = f"{subject[0].upper()}{subject[1:]} is fine, do not worry about it." if i % 10 != 9 else good
        chosen = [{"content": prompt, "role": "user"}, {"content": good, "role": "assistant"}]
        rejected = [{"content": prompt, "role": "user"}, {"content": weak, "role": "assistant"}]
        rows.append(
            {
                "prompt": prompt,
                "prompt_id": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
                "chosen": chosen,
                "rejected": rejected,
                "messages": chosen,
                "score_chosen": 8.0 + (i % 3) * 0.5,
                "score_rejected": 3.0 + (i % 4) * 0.5,
            }
        )
    return rows


def write_demo_ultrafeedback(path: str | Path, n: int) -> Path:
    """Write `demo_ultrafeedback_rows(n)` as JSONL, so the sampler runs offline in the demo."""
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    path = Path(path)
    write_jsonl(path, demo_ultrafeedback_rows(n))
    return path
