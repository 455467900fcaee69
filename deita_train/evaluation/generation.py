"""Benchmark answers from a checkpoint, rendered with the checkpoint's own chat template.

FastChat's `gen_model_answer.py` picks a conversation template by matching substrings of the model
name (a wrong match silently costs MT-Bench points) and hard-codes CUDA. Here the prompt is always
`tokenizer.apply_chat_template` of the checkpoint being evaluated (the project saves vicuna_v1.1
into every tokenizer it writes), generation stops at the tokenizer's EOS, and it runs on CPU or GPU
with `transformers`' `generate`, or with vLLM when it is installed.

Everything else follows FastChat: per-category temperatures, greedy below 1e-4, `torch.manual_seed(i)`
for choice i, turn 2 conditioned on the model's own turn-1 answer, 1024 new tokens, and answers in the
`model_answer` schema. Both writers are resumable: finished questions (or instructions) are appended
to a log as they complete and skipped on rerun.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from deita_train.evaluation.records import AppendLog, read_log
from deita_train.jsonl import write_json, write_jsonl


logger = logging.getLogger(__name__)

GREEDY_BELOW = 1e-4  # FastChat: do_sample = temperature >= 1e-4


class ChatGenerator(Protocol):
    """Continues each conversation with one assistant reply."""

    batch_size: int

    def chat(
        self,
        conversations: Sequence[Sequence[Mapping[str, str]]],
        temperatures: Sequence[float],
        max_new_tokens: int,
        seed: int | None = None,
        top_p: float | None = None,
    ) -> list[str]: ...


def _resolve_device(device: str | None) -> str:
    import torch

    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype)


class HFChatGenerator:
    """`transformers` generation on CPU or GPU; batches of `batch_size` are left-padded."""

    def __init__(self, model_path: str | Path, device: str | None = None, dtype: str = "auto", batch_size: int = 1):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = _resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if not self.tokenizer.chat_template:
            raise ValueError(
                f"{model_path}: the tokenizer has no chat template; save one into the checkpoint "
                "(deita_train.templates.install_chat_template) rather than guessing it from the model name"
            )
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.unk_token or self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # generation appends on the right
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_resolve_dtype(dtype, self.device))
        self.model.to(self.device).eval()
        self.batch_size = batch_size
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_token_ids = sorted(i for i in eos_ids if i is not None)

    def chat(
        self,
        conversations: Sequence[Sequence[Mapping[str, str]]],
        temperatures: Sequence[float],
        max_new_tokens: int,
        seed: int | None = None,
        top_p: float | None = None,
    ) -> list[str]:
        import torch

        out: list[str | None] = [None] * len(conversations)
        groups: dict[float, list[int]] = {}
        for i, t in enumerate(temperatures):
            groups.setdefault(float(t), []).append(i)
        for temperature, idx in groups.items():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                enc = self.tokenizer.apply_chat_template(
                    [list(conversations[i]) for i in chunk],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=True,
                    padding=True,
                    return_tensors="pt",
                ).to(self.device)
                kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": self.eos_token_ids}
                kwargs["pad_token_id"] = self.tokenizer.pad_token_id
                if temperature >= GREEDY_BELOW:
                    kwargs.update(do_sample=True, temperature=temperature)
                    if top_p is not None:
                        kwargs["top_p"] = top_p
                else:
                    kwargs["do_sample"] = False
                if seed is not None:
                    torch.manual_seed(seed)
                with torch.inference_mode():
                    generated = self.model.generate(**enc, **kwargs)
                new_tokens = generated[:, enc["input_ids"].shape[1] :]
                for i, row in zip(chunk, new_tokens):
                    out[i] = self.tokenizer.decode(row, skip_special_tokens=True).strip()
        return out  # type: ignore[return-value]


class VLLMChatGenerator:
    """vLLM offline generation (GPU); prompts are token ids from the same chat template, so no double BOS."""

    def __init__(self, model_path: str | Path, dtype: str = "auto", **llm_kwargs: Any):
        import vllm
        from transformers import AutoTokenizer
        from vllm.inputs import TokensPrompt

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if not self.tokenizer.chat_template:
            raise ValueError(f"{model_path}: the tokenizer has no chat template")
        self._vllm = vllm
        self._tokens_prompt = TokensPrompt
        self.llm = vllm.LLM(model=str(model_path), dtype=dtype, **llm_kwargs)
        self.batch_size = 1 << 30  # vLLM schedules the whole set itself

    def chat(
        self,
        conversations: Sequence[Sequence[Mapping[str, str]]],
        temperatures: Sequence[float],
        max_new_tokens: int,
        seed: int | None = None,
        top_p: float | None = None,
    ) -> list[str]:
        prompts = []
        params = []
        for conv, t in zip(conversations, temperatures):
            ids = self.tokenizer.apply_chat_template(
                list(conv), add_generation_prompt=True, tokenize=True, return_dict=True
            )
            prompts.append(self._tokens_prompt(prompt_token_ids=list(ids["input_ids"])))
            greedy = t < GREEDY_BELOW
            params.append(
                self._vllm.SamplingParams(
                    temperature=0.0 if greedy else float(t),
                    top_p=1.0 if greedy or top_p is None else top_p,
                    max_tokens=max_new_tokens,
                    seed=seed,
                    skip_special_tokens=True,
                )
            )
        results = self.llm.generate(prompts, params, use_tqdm=False)
        return [r.outputs[0].text.strip() for r in results]


def load_generator(
    model_path: str | Path, backend: str = "auto", device: str | None = None, dtype: str = "auto", batch_size: int = 1
) -> ChatGenerator:
    """`hf`, `vllm`, or `auto` (vLLM when installed and a GPU is present, else HF)."""
    if backend not in ("auto", "hf", "vllm"):
        raise ValueError(f"backend must be auto, hf or vllm, got {backend!r}")
    from deita_train.vllm_backend import vllm_available

    if backend == "auto":
        backend = "vllm" if vllm_available() and device in (None, "cuda") else "hf"
    if backend == "vllm":
        if not vllm_available():
            raise ImportError("backend=vllm needs the vllm package and a CUDA GPU (pip install 'deita-train[vllm]')")
        return VLLMChatGenerator(model_path, dtype=dtype)
    return HFChatGenerator(model_path, device=device, dtype=dtype, batch_size=batch_size)


# ------------------------------------------------------------------ MT-Bench answers


def question_temperature(question: Mapping[str, Any], override: float | None = None) -> float:
    """FastChat's per-category temperature (0.7 for unknown categories) unless overridden."""
    from deita_train.evaluation.mt_bench import DEFAULT_TEMPERATURE, TEMPERATURE_CONFIG

    if override is not None:
        return override
    return TEMPERATURE_CONFIG.get(question["category"], DEFAULT_TEMPERATURE)


def _new_answer_id() -> str:
    import shortuuid

    return shortuuid.uuid()


def generate_mt_bench_answers(
    generator: ChatGenerator,
    questions: Sequence[Mapping[str, Any]],
    answer_path: str | Path,
    model_id: str,
    max_new_tokens: int = 1024,
    num_choices: int = 1,
    temperature: float | None = None,
) -> dict[str, int]:
    """Answer every question not yet answered in `answer_path` (FastChat `model_answer` schema).

    Turn 2 is asked after the model's own turn-1 answer. Questions are processed in batches of
    `generator.batch_size`; each finished batch is appended, so a killed run resumes. At the end
    the file is rewritten sorted by question_id with one answer per question (FastChat's
    `reorg_answer_file`). Returns counts: questions, already answered, generated.
    """
    answer_path = Path(answer_path)
    done = {
        rec["question_id"]
        for rec in read_log(answer_path)
        if rec.get("model_id") == model_id
        and all(len(c.get("turns", [])) >= _n_turns(questions, rec["question_id"]) for c in rec.get("choices", []))
        and len(rec.get("choices", [])) == num_choices
    }
    todo = [q for q in questions if q["question_id"] not in done]
    logger.info(
        "%d questions: %d already answered, %d to generate", len(questions), len(questions) - len(todo), len(todo)
    )
    batch = max(1, generator.batch_size)
    from tqdm.auto import tqdm

    with AppendLog(answer_path) as log, tqdm(total=len(todo), desc=f"answers {model_id}", leave=False) as bar:
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            temps = [question_temperature(q, temperature) for q in chunk]
            choices: list[list[dict[str, Any]]] = [[] for _ in chunk]
            for i in range(num_choices):
                convs: list[list[dict[str, str]]] = [[] for _ in chunk]
                turns: list[list[str]] = [[] for _ in chunk]
                for j in range(max(len(q["turns"]) for q in chunk)):
                    active = [k for k, q in enumerate(chunk) if j < len(q["turns"])]
                    for k in active:
                        convs[k].append({"role": "user", "content": chunk[k]["turns"][j]})
                    replies = generator.chat(
                        [convs[k] for k in active],
                        [temps[k] for k in active],
                        max_new_tokens,
                        seed=i if j == 0 else None,
                    )
                    for k, reply in zip(active, replies):
                        convs[k].append({"role": "assistant", "content": reply})
                        turns[k].append(reply)
                for k in range(len(chunk)):
                    choices[k].append({"index": i, "turns": turns[k]})
            for k, q in enumerate(chunk):
                log.append(
                    {
                        "question_id": q["question_id"],
                        "answer_id": _new_answer_id(),
                        "model_id": model_id,
                        "choices": choices[k],
                        "tstamp": time.time(),
                    }
                )
            bar.update(len(chunk))
    _reorg_answers(answer_path)
    return {"n_questions": len(questions), "n_already_answered": len(questions) - len(todo), "n_generated": len(todo)}


def _n_turns(questions: Sequence[Mapping[str, Any]], qid: int) -> int:
    for q in questions:
        if q["question_id"] == qid:
            return len(q["turns"])
    return 0


def _reorg_answers(path: Path) -> None:
    by_qid = {rec["question_id"]: rec for rec in read_log(path)}
    write_jsonl(path, [by_qid[q] for q in sorted(by_qid)])


# ------------------------------------------------------------------ AlpacaEval outputs


def generate_alpaca_outputs(
    generator: ChatGenerator,
    instructions: Sequence[Mapping[str, Any]],
    output_path: str | Path,
    generator_name: str,
    max_new_tokens: int = 2048,
    temperature: float = 0.7,
    top_p: float | None = 1.0,
    seed: int = 0,
) -> dict[str, int]:
    """alpaca_eval's `model_outputs.json` ([{instruction, output, generator, dataset}], input order).

    Progress goes to `<output>.partial.jsonl` (one line per instruction, by index); a rerun skips
    what is there, provided it answers the same instruction. The final JSON is written atomically.
    """
    output_path = Path(output_path)
    log_path = output_path.with_name(output_path.name + ".partial.jsonl")
    done: dict[int, str] = {}
    for rec in read_log(log_path):
        i = rec["index"]
        if i >= len(instructions) or rec["instruction"] != instructions[i]["instruction"]:
            raise ValueError(
                f"{log_path}: record for index {i} does not match the instruction set being generated; "
                "it belongs to another run (delete it or choose another output path)"
            )
        if rec.get("generator") == generator_name:
            done[i] = rec["output"]
    todo = [i for i in range(len(instructions)) if i not in done]
    logger.info("%d instructions: %d already generated, %d to generate", len(instructions), len(done), len(todo))
    batch = max(1, generator.batch_size)
    from tqdm.auto import tqdm

    with AppendLog(log_path) as log, tqdm(total=len(todo), desc=f"outputs {generator_name}", leave=False) as bar:
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            replies = generator.chat(
                [[{"role": "user", "content": instructions[i]["instruction"]}] for i in chunk],
                [temperature] * len(chunk),
                max_new_tokens,
                seed=seed + chunk[0],
                top_p=top_p,
            )
            for i, reply in zip(chunk, replies):
                log.append(
                    {
                        "index": i,
                        "instruction": instructions[i]["instruction"],
                        "output": reply,
                        "generator": generator_name,
                    }
                )
                done[i] = reply
            bar.update(len(chunk))
    outputs = [
        {
            "instruction": inst["instruction"],
            "output": done[i],
            "generator": generator_name,
            "dataset": inst.get("dataset", "unknown"),
        }
        for i, inst in enumerate(instructions)
    ]
    write_json(output_path, outputs)
    return {
        "n_instructions": len(instructions),
        "n_already_generated": len(instructions) - len(todo),
        "n_generated": len(todo),
    }
