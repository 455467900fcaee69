"""Model and dataset cards for what deita-train publishes: metadata the Hub indexes, and a body a user can act on.

A model card says what the model is (base model, data with links, kind), how it was made (the
recipe inlined with secrets redacted, a hyperparameter table, framework versions), how to prompt
it (the vicuna_v1.1 template, rendered by the same code that rendered the training data) and how
to run it (a usage snippet that the tests execute against a tiny checkpoint, with the repo id
replaced by a local path: keep the repo id a plain string literal in every snippet). A dataset
card says how the selection was made (rule, threshold, budget, scorers, embedder, counts, a score
histogram) and how to load it.

Hub ids become links and YAML metadata (`base_model`, `datasets`); local paths are named in the
body only, because the Hub rejects metadata that points at repositories that do not exist.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

from deita_train.evaluation import downloads
from deita_train.evaluation.mt_bench import DEMO_QUESTIONS
from deita_train.jsonl import file_sha256
from deita_train.manifest import package_versions, redact
from deita_train.scorer_prompts import COMPLEXITY_TEMPLATE, QUALITY_TEMPLATE
from deita_train.templates import TEMPLATE_NAME, VICUNA_CHAT_TEMPLATE, render_conversation


logger = logging.getLogger(__name__)

KINDS = ("sft", "dpo", "scorer")
SCORER_TYPES = ("complexity", "quality")
DEITA_URL = "https://github.com/hkust-nlp/deita"
PAPER_URL = "https://arxiv.org/abs/2312.15685"
DEFAULT_DATA_FILES = "data/train.jsonl"

_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".arrow", ".csv", ".yaml", ".yml", ".txt", ".npy")

# Benchmarks with a known home: (display name, dataset id for `model-index`, link).
_BENCHMARKS = {
    "mt_bench": ("MT-Bench", "HuggingFaceH4/mt_bench_prompts", "https://arxiv.org/abs/2306.05685"),
    "alpaca_eval": ("AlpacaEval", "tatsu-lab/alpaca_eval", "https://github.com/tatsu-lab/alpaca_eval"),
}
# Metrics that are counts or bookkeeping: shown in the table, never in `model-index`.
_NON_METRICS = ("n_", "complete", "judge", "annotator", "generator", "version", "avg_length")
# The full benchmarks: a result over fewer is shown on the card but never indexed as the benchmark's score.
MT_BENCH_QUESTIONS = 80
ALPACA_EVAL_INSTRUCTIONS = 805

_HYPERPARAMETER_KEYS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "max_length",
    "max_prompt_length",
    "beta",
    "loss_type",
    "packing",
    "padding_free",
    "assistant_only_loss",
    "completion_only_loss",
    "gradient_checkpointing",
    "bf16",
    "fp16",
    "seed",
)


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def is_hub_id(name: str) -> bool:
    """True for `org/name` Hub ids; False for local paths (existing, absolute, relative or file-like)."""
    if not name or "/" not in name or name.startswith((".", "/", "~")) or name.lower().endswith(_FILE_SUFFIXES):
        return False
    if Path(name).exists():
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return name.count("/") == 1


def _model_link(name: str) -> str:
    return f"[{name}](https://huggingface.co/{name})" if is_hub_id(name) else f"`{name}` (local, not on the Hub)"


def _plain(obj: Any) -> Any:
    """JSON-plain values (numpy numbers and arrays become floats and lists) for YAML card metadata."""
    return json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _dataset_link(name: str) -> str:
    return (
        f"[{name}](https://huggingface.co/datasets/{name})" if is_hub_id(name) else f"`{name}` (local, not on the Hub)"
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _code(text: str, lang: str = "") -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _card_text(data: ModelCardData | DatasetCardData, body: str) -> str:
    return f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe YAML as a mapping, with every secret-looking value (hub_token, api_key, ...) redacted."""
    with open(path, encoding="utf-8") as f:
        recipe = yaml.safe_load(f) or {}
    if not isinstance(recipe, Mapping):
        raise ValueError(f"{path}: a recipe must be a YAML mapping, got {type(recipe).__name__}")
    return redact(dict(recipe))


def hyperparameters_from_recipe(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The training hyperparameters a reader looks for, picked from a recipe in a stable order."""
    return {k: recipe[k] for k in _HYPERPARAMETER_KEYS if k in recipe and recipe[k] is not None}


def _versions_block() -> str:
    names = {
        "python": "Python",
        "deita-train": "deita-train",
        "torch": "PyTorch",
        "transformers": "Transformers",
        "trl": "TRL",
        "accelerate": "Accelerate",
        "deepspeed": "DeepSpeed",
        "datasets": "Datasets",
        "peft": "PEFT",
        "fschat": "FastChat",
        "huggingface-hub": "huggingface_hub",
    }
    versions = package_versions()
    return "\n".join(f"- {label}: {versions[k]}" for k, label in names.items() if k in versions)


def _parameter_count(model_dir: Path) -> int | None:
    """Parameters from the safetensors headers (no tensor is loaded); None when there are none."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                total += math.prod(f.get_slice(key).get_shape())
    return total


def _human_count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}".replace(".00", "")
    return str(n)


def _saved_chat_template(model_dir: Path) -> str | None:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = model_dir / "tokenizer_config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
    return None


# ----------------------------------------------------------------------------------------------
# Evaluation results
# ----------------------------------------------------------------------------------------------


def _scalar_metrics(metrics: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in metrics.items() if v is None or isinstance(v, (int, float, str, bool))]


def _count(metrics: Mapping[str, Any], key: str) -> int:
    value = metrics.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _mt_bench_question_file_problem(metrics: Mapping[str, Any]) -> str | None:
    """None when the recorded question file is FastChat's MT-Bench file (by sha256), else what it is instead."""
    path = metrics.get("question_file")
    sha = metrics.get("question_file_sha256")
    if path is None and sha is None:
        return None
    name = Path(str(path)).name if path else "(unnamed)"
    if sha is None and path is not None and Path(str(path)).is_file():
        sha = file_sha256(path)
    if sha == downloads.REMOTE_FILES["mt_bench_questions"].sha256:
        return None
    if (path is not None and Path(str(path)).resolve() == DEMO_QUESTIONS.resolve()) or sha == file_sha256(
        DEMO_QUESTIONS
    ):
        return f"demo questions ({DEMO_QUESTIONS.parent.name}), not MT-Bench"
    if sha is None:
        return f"question file {name} could not be checked against MT-Bench's"
    return f"question file {name} is not MT-Bench's"


def eval_result_problems(bench: str, metrics: Mapping[str, Any]) -> list[str]:
    """Why a result must stay out of `model-index`: partial (failed, missing, `complete: false`) or not the full set.

    Judged from the counts the result carries (the MT-Bench summary and AlpacaEval's `results.json`
    record them); a hand-written result without counts has nothing to contradict it.
    """
    problems = []
    n_failed, n_missing = _count(metrics, "n_failed"), _count(metrics, "n_missing")
    if bench == "alpaca_eval" and n_failed:
        problems.append(f"partial: {n_failed} of {metrics.get('n_outputs', '?')} instructions not annotated")
    elif n_failed or n_missing:
        problems.append(f"partial: {n_failed} failed, {n_missing} missing judgments")
    elif metrics.get("complete") is False:
        problems.append("partial: the result says it is not complete")
    if "n_missing" in metrics and metrics["n_missing"] is None:
        problems.append("missing judgments not counted (summarized without the question list)")
    if bench == "mt_bench":
        n_questions, n_expected = metrics.get("n_questions"), metrics.get("n_expected")
        if n_questions is not None and n_questions != MT_BENCH_QUESTIONS:
            problems.append(f"{n_questions} questions, not the {MT_BENCH_QUESTIONS} of MT-Bench")
        elif n_expected is not None and n_expected != 2 * MT_BENCH_QUESTIONS:
            problems.append(
                f"{n_expected} judgments expected, not the {2 * MT_BENCH_QUESTIONS} of MT-Bench "
                f"({MT_BENCH_QUESTIONS} questions x 2 turns)"
            )
        question_problem = _mt_bench_question_file_problem(metrics)
        if question_problem:
            problems.append(question_problem)
    if bench == "alpaca_eval":
        n_outputs = metrics.get("n_outputs")
        if n_outputs is not None and n_outputs != ALPACA_EVAL_INSTRUCTIONS:
            problems.append(f"{n_outputs} instructions, not the {ALPACA_EVAL_INSTRUCTIONS} of AlpacaEval")
    return problems


def _eval_results_metadata(eval_results: Mapping[str, Mapping[str, Any]]) -> list[EvalResult]:
    out = []
    for bench, metrics in eval_results.items():
        if eval_result_problems(bench, metrics):
            continue
        name, dataset_type, _ = _BENCHMARKS.get(bench, (bench, bench, None))
        for metric, value in _scalar_metrics(metrics):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or metric.startswith(_NON_METRICS):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue
            out.append(
                EvalResult(
                    task_type="text-generation",
                    task_name="Text Generation",
                    dataset_type=dataset_type,
                    dataset_name=name,
                    metric_type=f"{bench}_{metric}",
                    metric_name=metric,
                    metric_value=value,
                )
            )
    return out


def _eval_section(eval_results: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    flagged = False
    for bench, metrics in eval_results.items():
        name, _, link = _BENCHMARKS.get(bench, (bench, None, None))
        problems = eval_result_problems(bench, metrics)
        if problems:
            # No link to the benchmark: a partial or non-standard run is not a score on it.
            flagged = True
            label = f"{name} (NOT INDEXED)"
            rows.append((label, "status", "; ".join(problems)))
        else:
            label = f"[{name}]({link})" if link else name
        rows += [(label, metric, value) for metric, value in _scalar_metrics(metrics)]
    note = (
        " Results marked NOT INDEXED are partial (failed or missing judgments) or not the full benchmark "
        "(fewer questions, or another question file): they are shown with their counts but kept out of the "
        "card's `model-index` metadata, and are not comparable with leaderboard scores."
        if flagged
        else ""
    )
    return (
        "## Evaluation\n\n"
        "Scores from this model's own evaluation runs (deita-train's MT-Bench and AlpacaEval steps). "
        "`n_failed` counts judgments that failed to parse or errored and are not in the means."
        + note
        + "\n\n"
        + _table(("benchmark", "metric", "value"), rows)
    )


def _check_eval_results(eval_results: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for bench, metrics in eval_results.items():
        if not isinstance(metrics, Mapping):
            raise ValueError(
                f"eval_results[{bench!r}] must be a mapping of metric -> value, got {type(metrics).__name__}"
            )
        out[str(bench)] = dict(metrics)
    return out


# What a card keeps from an MT-Bench summary entry: the scores and every count that says what they cover.
_MT_BENCH_KEYS = (
    "turn_1",
    "turn_2",
    "overall",
    "n_judgments",
    "n_ok",
    "n_failed",
    "n_missing",
    "n_expected",
    "complete",
)
_MT_BENCH_SOURCE_KEYS = ("n_questions", "question_file", "question_file_sha256")


def load_eval_results(paths: Sequence[str | Path], model: str | None = None) -> dict[str, dict[str, Any]]:
    """Merge evaluation result files into `{benchmark: {metric: value}}` for `build_model_card`.

    Accepted per file: `{benchmark: {metric: value}}`; an MT-Bench summary from
    `deita_train.evaluation.mt_bench` (`{"judge_model", "models": {name: {...}}}`; `model` picks the
    entry when it holds several); AlpacaEval's `results.json` (`deita_train.evaluation.alpaca`); or a
    flat `{metric: value}` (AlpacaEval when it has `win_rate`, else named by a `benchmark` key or the
    file stem). The counts come along, so `build_model_card` can keep partial runs out of `model-index`.
    """
    out: dict[str, dict[str, Any]] = {}
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: evaluation results must be a JSON object")
        if isinstance(data.get("models"), Mapping) and "judge_model" in data:
            models = data["models"]
            if model is None and len(models) != 1:
                raise ValueError(f"{path}: MT-Bench summary holds models {sorted(models)}; say which with `model`")
            key = model if model is not None else next(iter(models))
            if key not in models:
                raise ValueError(f"{path}: no MT-Bench results for model {key!r} (has {sorted(models)})")
            m = models[key]
            # Keys present with null stay (a null n_missing means missing judgments were not counted).
            entry = {k: m[k] for k in _MT_BENCH_KEYS if k in m}
            entry |= {k: m.get(k, data.get(k)) for k in _MT_BENCH_SOURCE_KEYS if k in m or k in data}
            for k in ("turn_1", "turn_2", "overall"):
                entry.setdefault(k, None)
            entry["judge"] = data.get("judge_model")
            out["mt_bench"] = entry
        elif data and all(isinstance(v, Mapping) for v in data.values()):
            out.update(_check_eval_results(data))
        else:
            flat = {k: v for k, v in data.items() if k != "benchmark"}
            is_alpaca = "win_rate" in data or ("annotator" in data and "n_outputs" in data)
            bench = data.get("benchmark") or ("alpaca_eval" if is_alpaca else Path(path).stem)
            out[str(bench)] = flat
    return out


# ----------------------------------------------------------------------------------------------
# Usage snippets: each keeps the repo id as one plain string literal (the tests swap it for a path)
# ----------------------------------------------------------------------------------------------


def chat_usage_snippet(repo_id: str, max_new_tokens: int = 256) -> str:
    """Generate with the model's own chat template (vicuna_v1.1), as published."""
    return f'''from transformers import AutoModelForCausalLM, AutoTokenizer

model_id = "{repo_id}"
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto")

messages = [{{"role": "user", "content": "Give me three tips for writing clear code."}}]
# The tokenizer carries the vicuna_v1.1 chat template the model was trained with.
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
inputs = inputs.to(model.device)
output = model.generate(**inputs, max_new_tokens={max_new_tokens})
reply = tokenizer.decode(output[0, inputs["input_ids"].shape[-1] :], skip_special_tokens=True)
print(reply)
'''


def scorer_usage_snippet(repo_id: str, scorer_type: str | None) -> str:
    """Score with a plain forward pass: the expectation of 1..6 under the softmax over the six digit logits.

    The prompts are the exact Deita scorer prompts (`deita_train.scorer_prompts`); the digit ids are
    looked up in the tokenizer (LLaMA and Mistral ids differ). Self-contained, so a user needs only
    transformers and torch.
    """
    complexity_call = 'print("complexity:", expected_score(COMPLEXITY_TEMPLATE.format(instruction=instruction)))'
    quality_call = (
        'print("quality:", expected_score(QUALITY_TEMPLATE.format(instruction=instruction, output=response)))'
    )
    calls = {"complexity": [complexity_call], "quality": [quality_call]}.get(
        scorer_type or "", [complexity_call, quality_call]
    )
    call_lines = "\n".join(calls)
    return f'''import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_id = "{repo_id}"
tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto")
model.eval()

# The exact Deita scorer prompts (note the trailing space: the score digit is the next token).
COMPLEXITY_TEMPLATE = {COMPLEXITY_TEMPLATE!r}
QUALITY_TEMPLATE = {QUALITY_TEMPLATE!r}
# Score digits looked up in this tokenizer: token ids differ between LLaMA and Mistral.
digit_ids = tokenizer.convert_tokens_to_ids(["1", "2", "3", "4", "5", "6"])
assert tokenizer.unk_token_id not in digit_ids, "the score digits must be single tokens"


def expected_score(prompt: str) -> float:
    """Expectation of 1..6 under the softmax over the six digit logits at the next position."""
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1, digit_ids].float()
    probs = torch.softmax(logits, dim=-1)
    return float((probs * torch.arange(1, 7, dtype=probs.dtype, device=probs.device)).sum())


instruction = "Write a haiku about gradient descent."
response = "Down the loss we slide, / step by step the slope grows flat, / minimum in sight."
{call_lines}
'''


def dataset_usage_snippet(repo_id: str) -> str:
    return f'''from datasets import load_dataset

dataset = load_dataset("{repo_id}", split="train")
print(dataset)
print(dataset[0]["conversations"][0]["value"][:200])
'''


# ----------------------------------------------------------------------------------------------
# Model card
# ----------------------------------------------------------------------------------------------

_KIND_TEXT = {
    "sft": "a chat model trained with supervised fine-tuning (TRL `SFTTrainer`)",
    "dpo": "a chat model trained with direct preference optimisation (TRL `DPOTrainer`)",
    "scorer": "a Deita {scorer} scorer, a causal LM trained to predict a 1-6 score digit,",
}
_ENTRY_POINTS = {"sft": "deita-sft", "dpo": "deita-dpo"}

_DIFFERENCES = {
    "common": [
        "**Right padding.** The original trainer padded Mistral on the left while its loss mask assumed right "
        "padding, so short samples lost their supervision. Here padding is on the right (or samples are packed), "
        "and the mask comes from character offsets rather than per-tokenizer offset arithmetic.",
        "**No silent holdout.** The original always held out 2% of the SFT data, even with evaluation off; "
        "here all of the training data is used unless the recipe asks for a split.",
    ],
    "dpo": [
        "**One template.** The original DPO data used lowercase `user:`/`assistant:` prompts, not the SFT "
        "template; here preference pairs are rendered with the same vicuna_v1.1 template as SFT.",
    ],
    "scorer": [
        "**No invented scores.** The original scorer returned 3.0 silently on a lookup error; here a failure is "
        "an error, and the score digit ids are derived from the tokenizer rather than hard-coded.",
    ],
}


def _infer_scorer_type(repo_id: str, model_dir: Path | None) -> str | None:
    names = [repo_id.lower()] + ([model_dir.name.lower()] if model_dir is not None else [])
    for t in SCORER_TYPES:
        if any(t in n for n in names):
            return t
    return None


def _template_section(kind: str, scorer_type: str | None) -> str:
    if kind == "scorer":
        parts = [
            "## Prompt format\n",
            "The scorer reads the exact Deita scorer prompt as plain text (no chat template) and predicts one "
            "score digit. Its score is the expectation of 1..6 under the softmax over the six digit logits at "
            "the next position.\n",
        ]
        if scorer_type in (None, "complexity"):
            parts.append("Complexity (one user query, no history):\n\n" + _code(COMPLEXITY_TEMPLATE) + "\n")
        if scorer_type in (None, "quality"):
            parts.append("Quality (one query and its response):\n\n" + _code(QUALITY_TEMPLATE) + "\n")
        return "\n".join(parts)
    example = render_conversation(
        [
            {"from": "human", "value": "Hello!"},
            {"from": "gpt", "value": "Hi!"},
            {"from": "human", "value": "How are you?"},
        ],
        add_generation_prompt=True,
    )
    return (
        f"## Prompt format: {TEMPLATE_NAME}\n\n"
        f"The model was trained with FastChat's [{TEMPLATE_NAME} template]"
        "(https://github.com/lm-sys/FastChat/blob/main/fastchat/conversation.py): a system prompt, then "
        "`USER: ... ASSISTANT: ...</s>` turns. The loss falls on each assistant reply and the `</s>` that "
        "closes it. A two-turn conversation waiting for the second reply renders as:\n\n"
        + _code(example)
        + "\n\nThe tokenizer's chat template renders the same string (after the `<s>` BOS token), so "
        "`tokenizer.apply_chat_template(messages, add_generation_prompt=True)` gives exactly the training format."
    )


def build_model_card(
    model_dir: str | Path | None,
    *,
    repo_id: str,
    kind: str,
    base_model: str,
    datasets: Sequence[str],
    recipe_path: str | Path | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    eval_results: Mapping[str, Mapping[str, Any]] | None = None,
    license: str = "apache-2.0",
    extra_notes: str | None = None,
    scorer_type: str | None = None,
) -> ModelCard:
    """The card of a model trained by deita-train (`kind` sft, dpo or scorer).

    `datasets` are Hub ids (linked, and listed in the metadata) or local paths (named only).
    `recipe_path` is inlined with secrets redacted; without `hyperparameters`, the table is picked
    from the recipe. `eval_results` (`{benchmark: {metric: value}}`, see `load_eval_results`) adds a
    table and `model-index` metadata; partial or non-standard runs (`eval_result_problems`) get the
    table only, marked with why. `scorer_type` (complexity or quality) is inferred from the
    repo id or directory name when not given; unknown, the card shows both prompts.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if scorer_type is not None and scorer_type not in SCORER_TYPES:
        raise ValueError(f"scorer_type must be one of {SCORER_TYPES}, got {scorer_type!r}")
    validate_repo_id(repo_id)
    model_dir = Path(model_dir) if model_dir is not None else None
    if kind == "scorer" and scorer_type is None:
        scorer_type = _infer_scorer_type(repo_id, model_dir)
    datasets = [str(d) for d in datasets]
    name = repo_id.split("/")[-1]
    recipe = load_recipe(recipe_path) if recipe_path is not None else None
    hparams = dict(hyperparameters) if hyperparameters is not None else hyperparameters_from_recipe(recipe or {})
    hparams = redact(hparams)
    evals = _check_eval_results(eval_results) if eval_results else {}
    eval_metadata = _eval_results_metadata(evals)

    hub_datasets = [d for d in datasets if is_hub_id(d)]
    tags = ["deita", "trl", kind, "alignment-data-selection", TEMPLATE_NAME]
    if kind == "scorer" and scorer_type:
        tags.append(f"{scorer_type}-scorer")
    data = ModelCardData(
        license=license,
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=hub_datasets or None,
        language=["en"],
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=tags,
        model_name=name if eval_metadata else None,
        eval_results=eval_metadata or None,
    )

    kind_text = _KIND_TEXT[kind].format(scorer=scorer_type or "complexity or quality")
    lines = [
        f"# {name}",
        "",
        f"{name} is {kind_text} from {_model_link(base_model)}. It was made with deita-train, a reimplementation "
        f"of [Deita]({DEITA_URL}) ([paper]({PAPER_URL})) on the Hugging Face stack (TRL, Transformers, "
        "Accelerate).",
        "",
        "## Model description",
        "",
        f"- **Kind:** {kind}" + (f" ({scorer_type} scorer)" if kind == "scorer" and scorer_type else ""),
        f"- **Finetuned from:** {_model_link(base_model)}",
        "- **Language:** primarily English",
        f"- **License:** {license}",
    ]
    if model_dir is not None and (model_dir / "config.json").is_file():
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        arch = ", ".join(config.get("architectures") or []) or config.get("model_type", "unknown")
        lines.append(f"- **Architecture:** {arch}")
        n_params = _parameter_count(model_dir)
        if n_params:
            lines.append(f"- **Parameters:** {_human_count(n_params)}")
        if kind != "scorer":
            saved = _saved_chat_template(model_dir)
            if saved is not None and saved.strip() != VICUNA_CHAT_TEMPLATE.strip():
                logger.warning("%s: the saved chat template is not deita-train's vicuna_v1.1 template", model_dir)
    lines += ["", "## Training data", ""]
    lines += [f"- {_dataset_link(d)}" for d in datasets] or ["- (not recorded)"]
    lines += ["", _template_section(kind, scorer_type), "", "## Usage", ""]
    snippet = scorer_usage_snippet(repo_id, scorer_type) if kind == "scorer" else chat_usage_snippet(repo_id)
    lines += [_code(snippet, "python"), ""]
    if evals:
        lines += [_eval_section(evals), ""]
    if recipe is not None:
        recipe_text = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, width=119)
        lines += [
            "## Training recipe",
            "",
            f"The recipe (`{Path(recipe_path).name}`) that produced this model, with secrets redacted. "
            + (
                f"Reproduce with `{_ENTRY_POINTS[kind]} --config {Path(recipe_path).name}`."
                if kind in _ENTRY_POINTS
                else "Pass it as `--config` to deita-train's scorer training step."
            ),
            "",
            _code(recipe_text, "yaml"),
            "",
        ]
    if hparams:
        lines += ["## Training hyperparameters", "", _table(("hyperparameter", "value"), list(hparams.items())), ""]
    diffs = _DIFFERENCES["common"] + _DIFFERENCES.get(kind, [])
    lines += ["## Differences from the original Deita", ""] + [f"- {d}" for d in diffs] + [""]
    if extra_notes:
        lines += ["## Notes", "", extra_notes.strip(), ""]
    lines += ["## Framework versions", "", _versions_block(), "", _CITATION]
    return ModelCard(_card_text(data, "\n".join(lines)))


_CITATION = """## Citation

```bibtex
@misc{liu2023what,
      title={What Makes Good Data for Alignment? A Comprehensive Study of Automatic Data Selection in Instruction Tuning},
      author={Wei Liu and Weihao Zeng and Keqing He and Yong Jiang and Junxian He},
      year={2023},
      eprint={2312.15685},
      archivePrefix={arXiv},
      primaryClass={cs.CL}
}
```"""


# ----------------------------------------------------------------------------------------------
# Dataset card
# ----------------------------------------------------------------------------------------------

_SCORE_MODE_TEXT = {
    "sum_product": "the sum over turns of complexity x quality (`sum_product`, the original Deita score; it grows "
    "with the number of turns)",
    "mean_product": "mean complexity x mean quality (`mean_product`, length-neutral)",
    "complexity": "the sum of the per-turn complexity scores (`complexity`)",
    "quality": "the sum of the per-turn quality scores (`quality`)",
}


_SCORER_TEXT = {"complexity": "complexity scorer (the query alone)", "quality": "quality scorer (query and response)"}


def size_category(n: int) -> str:
    """The Hub's `size_categories` bucket for `n` rows."""
    for bound, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return label
    return "1M<n<10M" if n < 10_000_000 else "n>10M"


def score_histogram(pool_scores: Sequence[float], selected_scores: Sequence[float], bins: int = 10) -> dict:
    """Counts of pool and selected scores over shared bins: the `score_histogram` a dataset card shows."""
    import numpy as np

    pool = np.asarray(pool_scores, dtype=np.float64)
    selected = np.asarray(selected_scores, dtype=np.float64)
    both = np.concatenate([pool, selected]) if selected.size else pool
    if both.size == 0:
        raise ValueError("score_histogram needs at least one score")
    edges = np.histogram_bin_edges(both, bins=bins)
    return {
        "bins": [float(x) for x in edges],
        "pool": [int(x) for x in np.histogram(pool, bins=edges)[0]],
        "selected": [int(x) for x in np.histogram(selected, bins=edges)[0]],
    }


def _histogram_table(hist: Mapping[str, Sequence[float]]) -> str:
    edges, pool, selected = list(hist["bins"]), list(hist.get("pool") or []), list(hist.get("selected") or [])
    n = len(edges) - 1
    if n < 1 or (pool and len(pool) != n) or (selected and len(selected) != n):
        raise ValueError(
            f"score_histogram: {len(edges)} bin edges need {n} counts each; got pool {len(pool)}, selected {len(selected)}"
        )
    rows = []
    for i in range(n):
        close = "]" if i == n - 1 else ")"
        rows.append(
            (
                f"[{edges[i]:.2f}, {edges[i + 1]:.2f}{close}",
                pool[i] if pool else "n/a",
                selected[i] if selected else "n/a",
            )
        )
    return _table(("deita score", "pool", "selected"), rows)


def build_dataset_card(
    *,
    repo_id: str,
    pretty_name: str,
    source_pools: Sequence[str],
    scorer_ids: Mapping[str, str],
    embedder_id: str,
    threshold: float,
    budget: int,
    counts: Mapping[str, Any],
    score_histogram: Mapping[str, Sequence[float]] | None = None,
    score_mode: str = "sum_product",
    config: Mapping[str, Any] | None = None,
    license: str = "mit",
    data_files: str = DEFAULT_DATA_FILES,
) -> DatasetCard:
    """The card of a Deita-selected dataset (deita-6k/10k style).

    `scorer_ids` maps "complexity"/"quality" to scorer ids or paths; `counts` holds what the
    selection step counted (pool, selected, rejected_similar, ...). `data_files` is where the
    records sit in the dataset repo (the `train` split of the default config).
    """
    validate_repo_id(repo_id)
    if score_mode not in _SCORE_MODE_TEXT:
        raise ValueError(f"unknown score_mode {score_mode!r}; expected one of {tuple(_SCORE_MODE_TEXT)}")
    missing = [k for k in SCORER_TYPES if score_mode in ("sum_product", "mean_product", k) and k not in scorer_ids]
    if missing:
        raise ValueError(f"scorer_ids lacks {missing} (needed by score_mode {score_mode!r})")
    n_rows = int(counts.get("selected", budget))
    data = DatasetCardData(
        license=license,
        language=["en"],
        task_categories=["text-generation"],
        size_categories=[size_category(n_rows)],
        pretty_name=pretty_name,
        tags=["deita", "sft", "instruction-tuning", "data-selection", "synthetic"],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": data_files}]}],
        source_datasets=[p for p in source_pools if is_hub_id(p)] or None,
        deita=_plain(
            {
                "source_pools": list(source_pools),
                "scorers": dict(scorer_ids),
                "embedder": embedder_id,
                "score_mode": score_mode,
                "threshold": threshold,
                "budget": budget,
                "counts": dict(counts),
                "score_histogram": dict(score_histogram) if score_histogram else None,
            }
        ),
    )
    pools = [_dataset_link(p) for p in source_pools]
    scorers = {k: _model_link(v) for k, v in scorer_ids.items()}
    lines = [
        f"# {pretty_name}",
        "",
        f"{pretty_name} holds {n_rows:,} conversations selected from {', '.join(pools) or 'a local pool'} with "
        f"[Deita]({DEITA_URL})'s score-first, diversity-aware rule ([paper]({PAPER_URL})), as reimplemented in "
        "deita-train.",
        "",
        "## How it was selected",
        "",
        "1. Every (user, assistant) turn pair of every pool conversation was scored by the "
        + " and the ".join(_SCORER_TEXT[k] for k in SCORER_TYPES if k in scorer_ids)
        + ": the expectation of 1..6 under the softmax over the six score-digit logits.",
        f"2. Each conversation's score is {_SCORE_MODE_TEXT[score_mode]}.",
        "3. Each conversation was embedded (the last token's final hidden state) by the embedder below.",
        "4. Conversations were visited best score first. The first was kept; a later one was kept only if its "
        f"cosine similarity to every conversation kept so far was <= {threshold}. Selection stopped when "
        f"{budget:,} were kept.",
        "",
        _table(
            ("setting", "value"),
            [
                ("source pools", ", ".join(pools) or "n/a"),
                *[(f"{k} scorer", v) for k, v in scorers.items()],
                ("embedder", _model_link(embedder_id)),
                ("score", score_mode),
                ("similarity threshold (tau)", threshold),
                ("budget", budget),
            ],
        ),
        "",
        "## Counts",
        "",
        _table(("count", "value"), [(k, v) for k, v in counts.items()]),
        "",
    ]
    if score_histogram is not None:
        lines += [
            "## Score distribution",
            "",
            "Deita scores of the scored pool and of the selected conversations, over the same bins.",
            "",
            _histogram_table(score_histogram),
            "",
        ]
    lines += [
        "## Format",
        "",
        f"One JSON object per line in `{data_files}`, in selection order: `id`, `conversations` (a list of "
        '`{"from": "system"|"human"|"gpt", "value": ...}` turns), the per-turn `complexity_scores` and '
        "`quality_scores`, `deita_score` and `deita_rank` (1-based); other keys of the pool are carried through. "
        "Train on it with the vicuna_v1.1 template, as the Deita models were.",
        "",
        "## Usage",
        "",
        _code(dataset_usage_snippet(repo_id), "python"),
        "",
    ]
    if config:
        config_text = yaml.safe_dump(redact(dict(config)), sort_keys=False, allow_unicode=True, width=119)
        lines += ["## Selection config", "", "The resolved configuration of the selection run (secrets redacted).", ""]
        lines += [_code(config_text, "yaml"), ""]
    lines += [
        "## License",
        "",
        f"Released under `{license}`. The conversations come from the source pools and keep their terms; "
        "check those before use.",
        "",
        _CITATION,
    ]
    return DatasetCard(_card_text(data, "\n".join(lines)))
