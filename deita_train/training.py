"""What the SFT, scorer and DPO entry points share: configs, data preparation, model loading, launch checks.

The entry points (`deita_train.sft`, `deita_train.dpo`) are thin; the decisions live here:

* Data is tokenized here, once, with the project's vicuna_v1.1 code (`templates.encode_conversation`),
  so the loss mask has one source of truth. TRL receives `input_ids` + `labels` and uses them as is.
  Every record is accounted for: kept, truncated (and kept), fully masked (dropped), or rejected.
* Scorer data is `prompt + digit`, exactly as the original scorers were trained: BOS, the scorer
  prompt (whose trailing space is the `▁` token), the bare digit token, no EOS; only the digit is
  supervised, and that is checked for every record.
* Preference pairs are plain strings in the SFT format (`prompt` ends with "ASSISTANT:", `chosen`
  and `rejected` are `" " + reply + "</s>"`), so TRL's tokenization of prompt+chosen is the same
  single tokenizer call as the SFT tokenization of the same conversation.
* `total_batch_size` fixes the effective batch whatever the number of processes; a launch that
  silently became N independent runs stops with an error; the last checkpoint is resumed by default.
* `push_to_hub: true` (repo `hub_model_id`) and `publish_dry_run: DIR` publish the final model once,
  at the end, through `deita_train.publish.publish_trained_model` (the project's card, the upload
  plan, the secret scan), never through the Trainer's own push, which would upload the whole
  output_dir with a generic card. The token comes from `hub_token`, `HF_TOKEN` or the login cache,
  and is checked for before training starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trl
from transformers import TrainerCallback

from deita_train.conversations import ConversationError, iter_source
from deita_train.jsonl import write_jsonl
from deita_train.templates import (
    GPT,
    HUMAN,
    IGNORE_INDEX,
    EncodedConversation,
    as_turns,
    encode_conversation,
    format_masked,
    install_chat_template,
    render_conversation,
    vicuna_conversation,
)


logger = logging.getLogger(__name__)

TASKS = ("chat", "scorer")
TINY_MODELS = {"tiny": "mistral", "tiny-mistral": "mistral", "tiny-llama": "llama"}
SCORER_PROMPT_ENDINGS = {"complexity": "##Complexity: ", "quality": "##Quality: "}
SCORE_DIGITS = ("1", "2", "3", "4", "5", "6")


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------


@dataclass
class RunArguments:
    """Training options every entry point adds to TRL's config (mixed into the SFT and DPO configs)."""

    total_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Effective batch size (samples per optimizer step over all processes). When set, "
            "gradient_accumulation_steps = total_batch_size / (per_device_train_batch_size * world_size), computed at "
            "start-up, so a recipe keeps its batch whatever the number of GPUs. Must divide exactly."
        },
    )
    auto_resume: bool = field(
        default=True,
        metadata={
            "help": "When resume_from_checkpoint is unset, resume from the last checkpoint-* in output_dir if there is "
            "one. Set false to start over (existing checkpoints are then overwritten as training goes)."
        },
    )
    param_checksums: bool = field(
        default=False,
        metadata={
            "help": "At the end of training every rank writes a checksum of the full parameters to "
            "output_dir/param_checksums/rank<N>.json, to check that the ranks ended in sync."
        },
    )
    publish_dry_run: str | None = field(
        default=None,
        metadata={
            "help": "At the end of training, write exactly what publishing would upload (model files, the model "
            "card as README.md, upload_plan.json) into this folder instead of uploading; no token needed. Works with "
            "or without push_to_hub (repo id: hub_model_id, else local/<output_dir name>)."
        },
    )


@dataclass
class DataArguments(trl.ScriptArguments):
    """Where the data comes from; `dataset_name` is a local .json/.jsonl/.parquet, a saved dataset or a Hub id."""

    max_samples: int | None = field(
        default=None, metadata={"help": "Use only the first N records (smoke tests, demos)."}
    )
    eval_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Hold out this fraction of the records as an eval set (seeded by `seed`). Default 0: everything "
            "is trained on (the original silently held out 2%)."
        },
    )
    strict_data: bool = field(
        default=True,
        metadata={
            "help": "A bad record stops the run with an error naming it. Set false to skip bad records instead; they "
            "are written with their reason to output_dir/rejects.jsonl and counted in the manifest."
        },
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {self.max_samples}")


@dataclass
class SFTScriptArguments(DataArguments):
    task: str = field(
        default="chat",
        metadata={
            "help": "chat: conversations rendered with vicuna_v1.1, loss on each assistant reply and its </s>. "
            "scorer: {prompt, completion} records (scorer prompt -> score digit), loss on the digit only, no EOS.",
            "choices": list(TASKS),
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")


@dataclass
class DPOScriptArguments(DataArguments):
    ref_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Reference model. Default: a frozen copy of model_name_or_path (the SFT checkpoint the policy "
            "starts from). Ignored with use_peft (the reference is the model with its adapter disabled)."
        },
    )


@dataclass
class DeitaSFTConfig(trl.SFTConfig, RunArguments):
    """TRL's SFTConfig plus `total_batch_size`, `auto_resume` and `param_checksums`."""


@dataclass
class DeitaDPOConfig(trl.DPOConfig, RunArguments):
    """TRL's DPOConfig plus `total_batch_size`, `auto_resume` and `param_checksums`."""


# --------------------------------------------------------------------------------------------------
# Launch checks, batch size, resume
# --------------------------------------------------------------------------------------------------


class DistributedLaunchError(RuntimeError):
    """The launcher started several processes but they do not form one distributed run."""


def check_distributed_launch(args: Any, environ: Mapping[str, str] | None = None) -> None:
    """Stop when the launcher asked for N processes but this process sees a world of another size.

    Without `use_cpu: true`, a multi-process launch on a machine without GPUs gives N processes that
    each train alone (world size 1), all writing the same output_dir, with no error from the stack.
    """
    environ = os.environ if environ is None else environ
    requested = int(environ.get("WORLD_SIZE", "1") or 1)
    actual = int(args.world_size)
    if requested > 1 and actual != requested:
        hint = (
            "On a machine without GPUs set `use_cpu: true` in the recipe (or pass --use_cpu true) together with "
            "a CPU launcher config such as accelerate_configs/cpu_2proc.yaml."
            if not getattr(args, "use_cpu", False)
            else "Check the launcher config (num_processes, distributed_type) and the rendezvous settings."
        )
        raise DistributedLaunchError(
            f"The launcher asked for {requested} processes (WORLD_SIZE={requested}) but this process sees a world of "
            f"{actual}: this would be {requested} independent runs writing the same output_dir, not one distributed "
            f"run. {hint}"
        )


def gradient_accumulation_for(total_batch_size: int, per_device_batch_size: int, world_size: int) -> int:
    """Accumulation steps that keep `total_batch_size` samples per optimizer step; it must divide exactly."""
    if total_batch_size < 1 or per_device_batch_size < 1 or world_size < 1:
        raise ValueError(
            f"batch sizes and world size must be >= 1, got total_batch_size={total_batch_size}, "
            f"per_device_train_batch_size={per_device_batch_size}, world_size={world_size}"
        )
    per_step = per_device_batch_size * world_size
    if total_batch_size % per_step:
        if total_batch_size % world_size:
            counts = [n for n in range(1, 65) if total_batch_size % n == 0]
            lower = total_batch_size // world_size * world_size
            hint = (
                f"{world_size} processes cannot share {total_batch_size} samples evenly: run on a process count "
                f"that divides it ({counts}) or set total_batch_size to a multiple of {world_size} "
                f"(nearest: {lower} or {lower + world_size}), knowing it changes the recipe's effective batch"
            )
        else:
            per_process = total_batch_size // world_size
            sizes = [d for d in range(1, per_process + 1) if per_process % d == 0]
            hint = (
                f"with {world_size} processes, per_device_train_batch_size must divide {per_process}: one of {sizes}"
            )
        raise ValueError(
            f"total_batch_size={total_batch_size} is not a multiple of per_device_train_batch_size "
            f"({per_device_batch_size}) x processes ({world_size}) = {per_step}; {hint}."
        )
    return total_batch_size // per_step


def apply_total_batch_size(args: Any) -> None:
    """Set `gradient_accumulation_steps` from `total_batch_size` for the actual world size (no-op when unset)."""
    if args.total_batch_size is None:
        return
    steps = gradient_accumulation_for(args.total_batch_size, args.per_device_train_batch_size, args.world_size)
    if args.gradient_accumulation_steps not in (1, steps):
        raise ValueError(
            f"gradient_accumulation_steps={args.gradient_accumulation_steps} conflicts with total_batch_size="
            f"{args.total_batch_size} (which needs {steps} with per_device_train_batch_size="
            f"{args.per_device_train_batch_size} on {args.world_size} processes); set only one of them."
        )
    args.gradient_accumulation_steps = steps
    logger.info(
        "Effective batch %d = %d per device x %d processes x %d accumulation steps",
        args.total_batch_size,
        args.per_device_train_batch_size,
        args.world_size,
        steps,
    )


def resolve_resume(args: Any) -> str | None:
    """The checkpoint to resume from: the one asked for, else (with auto_resume) the last one in output_dir."""
    from transformers.trainer_utils import get_last_checkpoint

    asked = args.resume_from_checkpoint
    if asked is not None and str(asked).lower() in ("false", "none", "no"):
        return None
    if asked is not None and str(asked).lower() in ("true", "last", "latest"):
        last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        if last is None:
            raise FileNotFoundError(f"resume_from_checkpoint={asked!r} but {args.output_dir} has no checkpoint-*")
        return last
    if asked is not None:
        if not os.path.isdir(asked):
            raise FileNotFoundError(f"resume_from_checkpoint: no checkpoint directory at {asked}")
        return str(asked)
    if getattr(args, "auto_resume", False) and os.path.isdir(args.output_dir):
        last = get_last_checkpoint(args.output_dir)
        if last is not None:
            logger.info("Resuming from the last checkpoint in output_dir: %s (auto_resume=false to start over)", last)
            return last
    return None


def skip_deepspeed_cpu_shm_kernel(environ: Mapping[str, str] | None = None) -> bool:
    """On a DeepSpeed launch without GPUs, keep DeepSpeed from JIT-compiling its shared-memory all-reduce kernel.

    DeepSpeed's CPU backend builds a C++ kernel on first use (minutes, and a compiler is needed);
    gloo, which it falls back to, is all a CPU smoke run needs. Must run before the training config
    is parsed (that is when the process group starts). DEITA_DS_SHM_COMM=1 keeps the kernel.
    Returns whether the kernel was switched off.
    """
    environ = os.environ if environ is None else environ
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true" or environ.get("DEITA_DS_SHM_COMM") == "1":
        return False
    import torch

    if torch.cuda.is_available():
        return False
    import deepspeed.ops

    if "__compatible_ops__" in vars(deepspeed.ops):
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    else:  # preset before DeepSpeed probes every op with compiler runs; only the comm backend reads this table
        deepspeed.ops.__compatible_ops__ = {"deepspeed_shm_comm": False}
    return True


@dataclass(frozen=True)
class PublishRequest:
    """What to publish at the end of training: the repo, and a dry-run folder (None: upload for real)."""

    repo_id: str
    dry_run_dir: str | None
    push: bool  # the recipe's push_to_hub, which is switched off on the TrainingArguments
    private: bool


def take_over_hub_push(args: Any) -> PublishRequest | None:
    """Move `push_to_hub` / `publish_dry_run` from the Trainer to deita-train's publishing; None when neither is set.

    Sets `args.push_to_hub = False` (so the Trainer never creates a repo, pushes checkpoints or
    writes its own card to the Hub) and keeps the request on `args.deita_publish`. Checks what can
    fail before hours of training: the repo id, and for a real upload that a token is at hand.
    Idempotent.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from deita_train.hub import resolve_token

    previous = getattr(args, "deita_publish", None)
    if previous is not None and not args.push_to_hub:
        return previous
    push, dry_run = bool(args.push_to_hub), getattr(args, "publish_dry_run", None)
    if not push and not dry_run:
        return None
    if push and not args.hub_model_id:
        raise ValueError("push_to_hub: true needs hub_model_id: ORG/NAME (the model repo to publish to)")
    repo_id = args.hub_model_id or f"local/{Path(args.output_dir).resolve().name}"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"hub_model_id {repo_id!r} is not a valid Hub repo id (ORG/NAME): {e}") from e
    if dry_run:
        out, dest = Path(args.output_dir).resolve(), Path(dry_run).resolve()
        if dest == out or out in dest.parents:
            raise ValueError(
                f"publish_dry_run {dry_run} is inside output_dir {args.output_dir}; pick a folder outside it"
            )
    if push and not dry_run and resolve_token(args.hub_token) is None:
        raise RuntimeError(
            "push_to_hub: true but no Hub token: set HF_TOKEN or run `hf auth login` before training "
            "(or set publish_dry_run: DIR to see what would be uploaded)"
        )
    if push and args.hub_revision:
        logger.warning(
            "hub_revision=%s is not used: deita-train publishes to the repo's main branch", args.hub_revision
        )
    request = PublishRequest(repo_id, str(dry_run) if dry_run else None, push, bool(args.hub_private_repo))
    args.push_to_hub = False
    args.deita_publish = request
    if args.process_index == 0:
        logger.info(
            "At the end of training the final model is published to %s%s through deita_train.hub "
            "(the Trainer's own push is off; checkpoints are not pushed)",
            repo_id,
            f" as a dry run into {dry_run}" if dry_run else "",
        )
    return request


def prepare_run(args: Any) -> None:
    """Start-up checks shared by the entry points: launch sanity, effective batch, log levels, Hub publishing."""
    import transformers

    level = logging.INFO if args.process_index == 0 else logging.WARNING
    logging.getLogger("deita_train").setLevel(level)
    transformers.utils.logging.set_verbosity(args.get_process_log_level())
    check_distributed_launch(args)
    apply_total_batch_size(args)
    take_over_hub_push(args)
    if args.process_index == 0:
        logger.info(
            "World size %d (%s), device %s", args.world_size, args.distributed_state.distributed_type, args.device
        )


# --------------------------------------------------------------------------------------------------
# Model and tokenizer
# --------------------------------------------------------------------------------------------------


def tiny_cache_dir() -> Path:
    return Path(os.environ.get("DEITA_TRAIN_CACHE", Path.home() / ".cache" / "deita_train"))


def resolve_model_path(name_or_path: str | None, args: Any | None = None) -> str:
    """Map the embedded default ('tiny', 'tiny-mistral', 'tiny-llama') to a local checkpoint; else unchanged.

    The tiny checkpoint is written once (deterministic: same weights every time) under
    $DEITA_TRAIN_CACHE (default ~/.cache/deita_train), by the main process first.
    """
    if not name_or_path:
        raise ValueError("model_name_or_path is required (a Hub id, a local checkpoint, or 'tiny' for CPU runs)")
    if name_or_path not in TINY_MODELS:
        return name_or_path
    from contextlib import nullcontext

    from deita_train.tiny import make_tiny_checkpoint

    out = tiny_cache_dir() / f"tiny-{TINY_MODELS[name_or_path]}"
    ctx = args.main_process_first(desc="tiny checkpoint") if args is not None else nullcontext()
    with ctx:
        if not (out / "config.json").is_file() or not (out / "model.safetensors").is_file():
            make_tiny_checkpoint(out, arch=TINY_MODELS[name_or_path])
    return str(out)


def load_tokenizer(model_path: str, model_args: Any, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer with the project's vicuna_v1.1 template, `</s>` EOS and right padding."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_path, revision=model_args.model_revision, trust_remote_code=trust_remote_code
    )
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(f"{model_path}: a fast tokenizer is needed (offsets give the loss mask); got a slow one")
    return install_chat_template(tokenizer)


def model_init_kwargs(model_args: Any, args: Any) -> dict[str, Any]:
    """Keyword arguments for `from_pretrained` from TRL's ModelConfig (the recipe's model_init_kwargs win)."""
    # dtype stays a string ("bfloat16", "auto", ...): TRL maps it, and the config stays JSON-serialisable
    kwargs: dict[str, Any] = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    if model_args.load_in_4bit or model_args.load_in_8bit:
        kwargs["device_map"] = {"": args.local_process_index}
    kwargs.update(args.model_init_kwargs or {})
    return kwargs


def quantization_and_peft(model_args: Any) -> tuple[Any, Any]:
    """(BitsAndBytesConfig or None, LoraConfig or None) from TRL's ModelConfig."""
    quantization = trl.get_quantization_config(model_args)
    peft_config = trl.get_peft_config(model_args)
    if quantization is not None and peft_config is None:
        raise ValueError("load_in_4bit / load_in_8bit trains only adapters: set use_peft: true (QLoRA)")
    return quantization, peft_config


def set_generation_eos(model: Any, tokenizer: Any) -> None:
    """Make the saved model stop at the template's `</s>`: config and generation config agree with the tokenizer."""
    eos = tokenizer.eos_token_id
    model.config.eos_token_id = eos
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        ids = gen.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        gen.eos_token_id = eos if not ids or ids == [eos] else [eos, *[i for i in ids if i != eos]]
        gen.pad_token_id = tokenizer.pad_token_id
        gen.bos_token_id = tokenizer.bos_token_id


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


# A record that cannot be used names its source, index, id and field: the data layer's own error.
RecordError = ConversationError


def load_records(
    source: str | Path, split: str | None = None, *, strict: bool = True, rejects: list | None = None
) -> list[dict[str, Any]]:
    """Plain records from .jsonl / .json / .parquet / a saved dataset dir / a Hub dataset id.

    Read with the data layer's reader, so every step accepts the same sources the same way. A line
    that is not JSON raises naming its record index and line (strict), or goes to `rejects` (lenient).
    """
    records = []
    for index, (line, raw, parse_error) in enumerate(iter_source(source, split)):
        if parse_error is not None:
            err = ConversationError(parse_error.reason, source=str(source), index=index, line=line)
            if strict or rejects is None:
                raise err
            rejects.append(err.as_reject(raw))
            continue
        records.append(raw)
    return records


@dataclass
class DataReport:
    """Where every input record went: n_in == n_rejected + n_skipped + n_dropped + n_train + n_eval."""

    source: str
    task: str
    max_length: int | None
    n_in: int = 0
    n_rejected: int = 0
    n_skipped: int = 0  # valid but beyond max_samples
    n_dropped: int = 0  # fully masked after tokenization/truncation: nothing to learn, never trained on
    n_truncated: int = 0  # kept, cut to max_length
    n_train: int = 0
    n_eval: int = 0
    n_tokens: int = 0
    n_supervised_tokens: int = 0
    dropped_ids: list[str] = field(default_factory=list)

    @property
    def n_kept(self) -> int:
        return self.n_train + self.n_eval

    def check(self) -> None:
        if self.n_in != self.n_rejected + self.n_skipped + self.n_dropped + self.n_kept:
            raise AssertionError(f"record accounting does not add up: {self}")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_kept"] = self.n_kept
        d["dropped_ids"] = self.dropped_ids[:50]
        return d

    def summary(self) -> str:
        return (
            f"{self.source} ({self.task}): {self.n_in} records -> kept {self.n_kept} (train {self.n_train}, eval "
            f"{self.n_eval}), truncated to {self.max_length} tokens {self.n_truncated}, fully masked and dropped "
            f"{self.n_dropped}, rejected {self.n_rejected}, beyond max_samples {self.n_skipped}; "
            f"{self.n_supervised_tokens} supervised of "
            f"{self.n_tokens} tokens"
        )


@dataclass
class Encoded:
    """One tokenized training record."""

    id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def split_eval(items: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Deterministic train/eval split; fraction 0 keeps everything for training."""
    if fraction <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(items) * fraction)))
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def _finish(
    encoded: list[Encoded], report: DataReport, eval_fraction: float, seed: int
) -> tuple[list[Encoded], list[Encoded]]:
    train, evals = split_eval(encoded, eval_fraction, seed)
    report.n_train, report.n_eval = len(train), len(evals)
    report.check()
    return train, evals


def _limit(records: list[Any], max_samples: int | None, report: DataReport) -> list[Any]:
    if max_samples is not None and len(records) > max_samples:
        report.n_skipped = len(records) - max_samples
        return records[:max_samples]
    return records


def _reject_or_raise(err: RecordError, raw: Any, strict: bool, report: DataReport, rejects: list) -> None:
    if strict:
        raise err
    report.n_rejected += 1
    rejects.append(err.as_reject(raw))


def encode_chat_records(
    records: Sequence[dict[str, Any]], tokenizer: Any, max_length: int | None, report: DataReport
) -> list[Encoded]:
    """Validated conversation records -> vicuna_v1.1 input_ids/labels; fully masked ones dropped and counted."""
    out = []
    for rec in records:
        enc: EncodedConversation = encode_conversation(rec["conversations"], tokenizer, max_length)
        if enc.fully_masked:
            report.n_dropped += 1
            report.dropped_ids.append(str(rec["id"]))
            continue
        report.n_truncated += enc.truncated
        report.n_tokens += len(enc.input_ids)
        report.n_supervised_tokens += enc.num_supervised
        out.append(Encoded(str(rec["id"]), enc.input_ids, enc.labels, enc.truncated))
    return out


def scorer_prompt_and_score(record: Any, source: str, index: int) -> tuple[str, str]:
    """(prompt, digit) of a scorer-training record; raises RecordError naming the problem.

    Accepts the EVOL step's `{"prompt", "completion", "kind", ...}` and the original's ShareGPT rows
    (`conversations`: human = the full scorer prompt, gpt = the digit).
    """
    rid = record.get("id") if isinstance(record, dict) else None

    def err(reason: str, fld: str | None) -> RecordError:
        return RecordError(reason, source=source, index=index, record_id=rid, field=fld)

    if not isinstance(record, dict):
        raise err(f"record must be an object, got {type(record).__name__}", None)
    if "prompt" in record:
        prompt, digit, pf, cf = record.get("prompt"), record.get("completion"), "prompt", "completion"
    elif "conversations" in record or "messages" in record:
        key = "conversations" if "conversations" in record else "messages"
        try:
            turns = as_turns(record[key])
        except (KeyError, TypeError) as e:
            raise err(f"turns need from/value or role/content ({e})", key) from None
        if len(turns) != 2 or turns[0]["from"] != HUMAN or turns[1]["from"] != GPT:
            raise err("a scorer conversation is exactly [human: scorer prompt, gpt: score digit]", key)
        prompt, digit, pf, cf = turns[0]["value"], turns[1]["value"], f"{key}[0]", f"{key}[1]"
    else:
        raise err("no 'prompt'/'completion' (or 'conversations') field", "prompt")
    if isinstance(digit, int) and not isinstance(digit, bool):
        digit = str(digit)
    if not isinstance(prompt, str) or not prompt.strip():
        raise err("must be a non-empty string (the exact scorer prompt)", pf)
    if not isinstance(digit, str) or digit not in SCORE_DIGITS:
        raise err(f"must be one score digit 1-6 with no spaces, got {digit!r}", cf)
    kind = record.get("kind")
    endings = [SCORER_PROMPT_ENDINGS[kind]] if kind in SCORER_PROMPT_ENDINGS else SCORER_PROMPT_ENDINGS.values()
    if kind is not None and kind not in SCORER_PROMPT_ENDINGS:
        raise err(f"unknown kind {kind!r}; expected one of {list(SCORER_PROMPT_ENDINGS)}", "kind")
    if not any(prompt.endswith(e) for e in endings):
        raise err(
            f"the scorer prompt must end with {' or '.join(repr(e) for e in endings)} (trailing space included), "
            f"as the original scorer templates do; got ...{prompt[-30:]!r}",
            pf,
        )
    score = record.get("score")
    if score is not None and str(score) != digit:
        raise err(f"score {score!r} disagrees with completion {digit!r}", "score")
    return prompt, digit


def encode_scorer_example(prompt: str, digit: str, tokenizer: Any, max_length: int | None) -> EncodedConversation:
    """BOS + prompt tokens + the digit token, label on the digit only, no EOS (the original scorer format).

    One tokenizer call over prompt+digit (as the original); the supervised token is the one whose
    characters lie in the digit. Raises if that is not exactly one token that is the bare digit.
    """
    enc = tokenizer(prompt + digit, add_special_tokens=True, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    start = len(prompt)
    labels = [
        tok if (end > begin and end > start) else IGNORE_INDEX for tok, (begin, end) in zip(ids, offsets, strict=True)
    ]
    supervised = [tok for tok in labels if tok != IGNORE_INDEX]
    if len(supervised) != 1 or tokenizer.convert_ids_to_tokens(supervised[0]) != digit:
        pieces = tokenizer.convert_ids_to_tokens(supervised)
        raise ValueError(
            f"score {digit!r} does not tokenize to one bare digit token after the prompt (got {pieces}); the scorer "
            "prompt must end with a space so the digit is its own token, as in the original scorers"
        )
    if ids and ids[-1] == tokenizer.eos_token_id:
        raise ValueError("the tokenizer appended EOS; scorer targets carry no EOS")
    full = len(ids)
    if max_length is not None and full > max_length:
        ids, labels = ids[:max_length], labels[:max_length]
    return EncodedConversation(list(ids), labels, full)


def encode_scorer_records(
    records: Sequence[Any],
    tokenizer: Any,
    max_length: int | None,
    report: DataReport,
    strict: bool = True,
    rejects: list | None = None,
) -> list[Encoded]:
    """Scorer records -> input_ids/labels with exactly one supervised digit token each."""
    rejects = [] if rejects is None else rejects
    out = []
    for index, rec in enumerate(records):
        try:
            prompt, digit = scorer_prompt_and_score(rec, report.source, index)
            try:
                enc = encode_scorer_example(prompt, digit, tokenizer, max_length)
            except ValueError as e:
                raise RecordError(str(e), source=report.source, index=index, record_id=rec.get("id")) from None
        except RecordError as e:
            _reject_or_raise(e, rec, strict, report, rejects)
            continue
        rid = str(rec.get("id", f"record-{index}"))
        if enc.fully_masked:  # the prompt alone fills max_length: the digit was cut
            report.n_dropped += 1
            report.dropped_ids.append(rid)
            continue
        report.n_truncated += enc.truncated
        report.n_tokens += len(enc.input_ids)
        report.n_supervised_tokens += enc.num_supervised
        out.append(Encoded(rid, enc.input_ids, enc.labels, enc.truncated))
    return out


def to_dataset(encoded: Sequence[Encoded]) -> Any:
    """A `datasets.Dataset` with the `input_ids` and `labels` columns TRL's SFTTrainer uses as they are."""
    import datasets

    return datasets.Dataset.from_dict(
        {"input_ids": [e.input_ids for e in encoded], "labels": [e.labels for e in encoded]}
    )


def log_sample_and_counts(encoded: Sequence[Encoded], report: DataReport, tokenizer: Any) -> None:
    logger.info("Data: %s", report.summary())
    if encoded:
        e = encoded[0]
        logger.info(
            "Sample %s as trained (%d tokens; supervised spans in [[...]]):\n%s",
            e.id,
            len(e.input_ids),
            format_masked(e.input_ids, e.labels, tokenizer),
        )


def prepare_sft_data(
    script_args: SFTScriptArguments, tokenizer: Any, args: Any
) -> tuple[Any, Any | None, DataReport, list[Encoded]]:
    """Load, validate, tokenize and split the SFT (chat or scorer) data; log one masked sample and the counts."""
    from deita_train.conversations import load_conversations_with_report

    source = script_args.dataset_name
    if not source:
        raise ValueError("dataset_name is required (a .jsonl/.json/.parquet file, a saved dataset or a Hub id)")
    split = script_args.dataset_train_split
    report = DataReport(source=str(source), task=script_args.task, max_length=args.max_length)
    rejects: list[dict[str, Any]] = []
    with args.main_process_first(desc="load dataset"):
        if script_args.task == "chat":
            records, load_report = load_conversations_with_report(source, split, strict=script_args.strict_data)
            rejects.extend(load_report.rejects)
            report.n_in, report.n_rejected = load_report.n_in, load_report.n_rejected
            records = _limit(records, script_args.max_samples, report)
            encoded = encode_chat_records(records, tokenizer, args.max_length, report)
        else:
            n_rejects = len(rejects)
            records = load_records(source, split, strict=script_args.strict_data, rejects=rejects)
            report.n_rejected += len(rejects) - n_rejects  # lines that were not records at all
            report.n_in = len(records) + len(rejects) - n_rejects
            records = _limit(records, script_args.max_samples, report)
            encoded = encode_scorer_records(
                records, tokenizer, args.max_length, report, strict=script_args.strict_data, rejects=rejects
            )
    if rejects and args.process_index == 0:
        write_jsonl(Path(args.output_dir) / "rejects.jsonl", rejects)
    if not encoded:
        raise ValueError(f"no trainable records left: {report.summary()}")
    train, evals = _finish(encoded, report, script_args.eval_fraction, args.seed)
    log_sample_and_counts(train, report, tokenizer)
    return to_dataset(train), (to_dataset(evals) if evals else None), report, train


# --------------------------------------------------------------------------------------------------
# Preference pairs (DPO)
# --------------------------------------------------------------------------------------------------


def _assistant_suffix(reply: str) -> str:
    conv = vicuna_conversation()
    return " " + reply + conv.sep2


def preference_pair(prompt_turns: Sequence[dict[str, Any]], chosen: str, rejected: str) -> dict[str, str]:
    """The project's preference-pair strings: prompt + chosen is exactly the SFT rendering of the conversation."""
    return {
        "prompt": render_conversation(prompt_turns, add_generation_prompt=True),
        "chosen": _assistant_suffix(chosen),
        "rejected": _assistant_suffix(rejected),
    }


def _last_assistant(turns: list[dict[str, str]]) -> str:
    if not turns or turns[-1]["from"] != GPT:
        raise ValueError("the last turn must be the assistant's reply")
    return turns[-1]["value"]


def normalize_preference_record(record: Any, source: str, index: int) -> dict[str, str]:
    """{"prompt", "chosen", "rejected"} strings in the SFT format, from the project format or message lists.

    Project format (DESIGN.md): prompt = render_conversation(turns, add_generation_prompt=True) and
    chosen/rejected = " " + reply + "</s>". Also accepted: chosen/rejected as full conversations
    (e.g. HuggingFaceH4/ultrafeedback_binarized), whose shared history becomes the prompt.
    """
    rid = record.get("id") if isinstance(record, dict) else None

    def err(reason: str, fld: str | None) -> RecordError:
        return RecordError(reason, source=source, index=index, record_id=rid, field=fld)

    if not isinstance(record, dict):
        raise err(f"record must be an object, got {type(record).__name__}", None)
    for key in ("chosen", "rejected"):
        if key not in record:
            raise err("missing", key)
    chosen, rejected, prompt = record["chosen"], record["rejected"], record.get("prompt")
    if isinstance(chosen, list) or isinstance(rejected, list):
        try:
            c_turns, r_turns = as_turns(chosen), as_turns(rejected)
            c_reply, r_reply = _last_assistant(c_turns), _last_assistant(r_turns)
        except (KeyError, TypeError, ValueError) as e:
            raise err(
                f"conversation form needs message lists ending with an assistant reply ({e})", "chosen"
            ) from None
        history = c_turns[:-1]
        if history != r_turns[:-1]:
            raise err("chosen and rejected conversations have different histories", "rejected")
        if isinstance(prompt, list) and as_turns(prompt) != history:
            raise err("prompt turns differ from the history of chosen/rejected", "prompt")
        if not history or history[-1]["from"] != HUMAN:
            raise err("the history before the reply must end with a user turn", "chosen")
        pair = preference_pair(history, c_reply, r_reply)
    else:
        if isinstance(prompt, list):
            try:
                prompt = render_conversation(as_turns(prompt), add_generation_prompt=True)
            except (KeyError, TypeError) as e:
                raise err(f"prompt turns need from/value or role/content ({e})", "prompt") from None
        pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    conv = vicuna_conversation()
    gen_tag = conv.roles[1] + ":"
    if not isinstance(pair["prompt"], str) or not pair["prompt"].endswith(gen_tag):
        raise err(
            f"must be the vicuna_v1.1 rendering ending with {gen_tag!r} (render_conversation(..., True))", "prompt"
        )
    for key in ("chosen", "rejected"):
        value = pair[key]
        if not isinstance(value, str) or not value.startswith(" ") or not value.endswith(conv.sep2):
            raise err(f"must be ' ' + reply + {conv.sep2!r} (one vicuna_v1.1 assistant turn), got {value!r:.60}", key)
        if not value[1 : -len(conv.sep2)].strip():
            raise err("empty reply", key)
    if pair["chosen"] == pair["rejected"]:
        raise err("chosen and rejected are identical: no preference to learn", "rejected")
    return pair


@dataclass
class PreferenceItem:
    id: str
    prompt: str
    chosen: str
    rejected: str
    n_prompt: int
    n_chosen: int
    n_rejected: int


def prepare_preference_items(
    records: Sequence[Any],
    tokenizer: Any,
    max_length: int | None,
    report: DataReport,
    strict: bool = True,
    rejects: list | None = None,
) -> list[PreferenceItem]:
    """Validate pairs; drop (and count) pairs whose prompt alone fills max_length; count truncated pairs."""
    rejects = [] if rejects is None else rejects
    pairs, raws = [], []
    for index, rec in enumerate(records):
        try:
            pairs.append((index, normalize_preference_record(rec, report.source, index)))
            raws.append(rec)
        except RecordError as e:
            _reject_or_raise(e, rec, strict, report, rejects)
    if not pairs:
        return []
    prompts = [p["prompt"] for _, p in pairs]
    n_prompt = [len(x) for x in tokenizer(prompts)["input_ids"]]
    n_chosen = [len(x) for x in tokenizer([p["prompt"] + p["chosen"] for _, p in pairs])["input_ids"]]
    n_rejected = [len(x) for x in tokenizer([p["prompt"] + p["rejected"] for _, p in pairs])["input_ids"]]
    out = []
    for k, ((index, pair), raw) in enumerate(zip(pairs, raws, strict=True)):
        rid = str(raw.get("id", f"record-{index}"))
        if max_length is not None and n_prompt[k] >= max_length:
            report.n_dropped += 1
            report.dropped_ids.append(rid)
            continue
        truncated = max_length is not None and max(n_chosen[k], n_rejected[k]) > max_length
        report.n_truncated += truncated
        total = n_chosen[k] + n_rejected[k]
        if max_length is not None:
            total = min(n_chosen[k], max_length) + min(n_rejected[k], max_length)
        report.n_tokens += total
        report.n_supervised_tokens += total - 2 * n_prompt[k]
        out.append(PreferenceItem(rid, n_prompt=n_prompt[k], n_chosen=n_chosen[k], n_rejected=n_rejected[k], **pair))
    return out


def prepare_dpo_data(
    script_args: DPOScriptArguments, tokenizer: Any, args: Any
) -> tuple[Any, Any | None, DataReport, list[PreferenceItem]]:
    """Load, validate and split preference pairs into the string columns TRL's DPOTrainer tokenizes."""
    import datasets

    source = script_args.dataset_name
    if not source:
        raise ValueError("dataset_name is required (preference pairs: .jsonl/.json/.parquet, saved dataset, Hub id)")
    report = DataReport(source=str(source), task="dpo", max_length=args.max_length)
    rejects: list[dict[str, Any]] = []
    with args.main_process_first(desc="load dataset"):
        records = load_records(
            source, script_args.dataset_train_split, strict=script_args.strict_data, rejects=rejects
        )
    report.n_rejected += len(rejects)  # lines that were not records at all
    report.n_in = len(records) + len(rejects)
    records = _limit(records, script_args.max_samples, report)
    items = prepare_preference_items(
        records, tokenizer, args.max_length, report, strict=script_args.strict_data, rejects=rejects
    )
    if rejects and args.process_index == 0:
        write_jsonl(Path(args.output_dir) / "rejects.jsonl", rejects)
    if not items:
        raise ValueError(f"no trainable preference pairs left: {report.summary()}")
    train, evals = split_eval(items, script_args.eval_fraction, args.seed)
    report.n_train, report.n_eval = len(train), len(evals)
    report.check()
    logger.info("Data: %s", report.summary())
    first = train[0]
    logger.info(
        "Sample %s as trained (prompt, then [[chosen]] / [[rejected]]):\n%s[[%s]]\n  vs [[%s]]",
        first.id,
        first.prompt,
        first.chosen,
        first.rejected,
    )

    def ds(rows: list[PreferenceItem]) -> Any:
        return datasets.Dataset.from_dict(
            {
                "prompt": [r.prompt for r in rows],
                "chosen": [r.chosen for r in rows],
                "rejected": [r.rejected for r in rows],
            }
        )

    return ds(train), (ds(evals) if evals else None), report, train


# --------------------------------------------------------------------------------------------------
# Callbacks and outputs
# --------------------------------------------------------------------------------------------------


def parameter_checksum(model: Any) -> dict[str, Any]:
    """sha256 over every parameter (float32 bytes, name order) and the total sum; gathers ZeRO-3 shards."""
    import torch
    from transformers.integrations import is_deepspeed_zero3_enabled

    h = hashlib.sha256()
    total, count = 0.0, 0
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if is_deepspeed_zero3_enabled() and hasattr(param, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                data = param.detach().to(torch.float32).cpu().clone()
        else:
            data = param.detach().to(torch.float32).cpu()
        h.update(name.encode())
        h.update(data.numpy().tobytes())
        total += float(data.double().sum())
        count += data.numel()
    return {"sha256": h.hexdigest(), "sum": total, "numel": count}


class ParamChecksumCallback(TrainerCallback):
    """Every rank writes the checksum of its full parameters at the end of training."""

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        out = Path(args.output_dir) / "param_checksums"
        out.mkdir(parents=True, exist_ok=True)
        record = {"rank": args.process_index, "world_size": args.world_size, "global_step": state.global_step}
        record.update(parameter_checksum(model))
        (out / f"rank{args.process_index}.json").write_text(json.dumps(record))


def trainer_callbacks(args: Any, extra: Sequence[TrainerCallback] | None = None) -> list[TrainerCallback]:
    callbacks = list(extra or [])
    if getattr(args, "param_checksums", False):
        callbacks.append(ParamChecksumCallback())
    return callbacks


@dataclass
class RunResult:
    """What an entry point returns: where the model went, the final metrics and the data accounting."""

    output_dir: Path
    metrics: dict[str, Any]
    data: DataReport
    resumed_from: str | None = None
    published: str | None = None  # the repo URL or the dry-run folder, on the main process


def publish_trained(output_dir: str | Path, request: PublishRequest, token: str | None = None) -> str:
    """Publish a finished output_dir as `request` says, with the card `deita_train.publish` builds from its manifest."""
    from deita_train.publish import publish_trained_model

    try:
        return publish_trained_model(
            output_dir,
            request.repo_id,
            dry_run_dir=request.dry_run_dir,
            private=request.private,
            token=token,
        )
    except Exception:
        logger.error(
            "Publishing %s failed; the model is saved. Retry with: python -m deita_train.publish model --path %s "
            "--repo_id %s%s",
            output_dir,
            output_dir,
            request.repo_id,
            f" --dry_run {request.dry_run_dir}" if request.dry_run_dir else "",
        )
        raise


def distributed_summary(trainer: Any) -> dict[str, Any]:
    """How the run is actually distributed (what the manifest records and the tests check)."""
    acc = trainer.accelerator
    summary: dict[str, Any] = {
        "distributed_type": str(acc.distributed_type).split(".")[-1],
        "num_processes": acc.num_processes,
        "device": str(acc.device),
        "gradient_accumulation_steps": trainer.args.gradient_accumulation_steps,
        "per_device_train_batch_size": trainer.args.per_device_train_batch_size,
        "effective_batch_size": trainer.args.gradient_accumulation_steps
        * trainer.args.per_device_train_batch_size
        * acc.num_processes,
    }
    plugin = acc.state.deepspeed_plugin
    if plugin is not None:
        summary["zero_stage"] = plugin.zero_stage
    return summary


def train_and_save(
    trainer: Any, tokenizer: Any, args: Any, report: DataReport, step: str, config: Mapping[str, Any]
) -> RunResult:
    """Train (resuming if asked or if output_dir holds a checkpoint), save model + tokenizer, write the manifest."""
    from deita_train.manifest import write_manifest

    resume = resolve_resume(args)
    distributed = distributed_summary(trainer)
    logger.info("Distributed setup: %s", distributed)
    result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(result.metrics)
    metrics["train_samples"] = report.n_train
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    model = trainer.accelerator.unwrap_model(trainer.model)
    set_generation_eos(model, tokenizer)
    model.config.use_cache = True
    trainer.save_model(args.output_dir)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(args.output_dir)
        inputs = [config["script"].get("dataset_name")] if isinstance(config.get("script"), dict) else []
        write_manifest(
            Path(args.output_dir) / "manifest.json",
            step=step,
            config=config,
            inputs=[p for p in inputs if p and Path(p).exists()],
            outputs=[args.output_dir],
            counts=report.as_dict(),
            extra={
                "metrics": metrics,
                "resumed_from": resume,
                "distributed": distributed,
            },
        )
    trainer.accelerator.wait_for_everyone()
    published = None
    request = getattr(args, "deita_publish", None)
    if request is not None and trainer.accelerator.is_main_process:  # after the barrier: no rank waits on an upload
        published = publish_trained(args.output_dir, request, token=args.hub_token)
    return RunResult(Path(args.output_dir), metrics, report, resume, published)


def run_config(script_args: Any, args: Any, model_args: Any) -> dict[str, Any]:
    """The resolved configuration for the manifest (TrainingArguments.to_dict hides tokens).

    `push_to_hub` is the recipe's value, though the Trainer runs with it off (see `take_over_hub_push`).
    """
    training = args.to_dict()
    request = getattr(args, "deita_publish", None)
    if request is not None:
        training["push_to_hub"] = request.push
    return {"script": asdict(script_args), "training": training, "model": asdict(model_args)}
