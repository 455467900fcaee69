"""Tiny random-weight checkpoints: the embedded default that tests, benchmarks and `make demo` run on.

The weights are random and small (a few MB) but the tokenizer is the real Mistral-7B-v0.1
SentencePiece model that the `mistral-common` package ships, so token ids, digit ids, `</s>`
handling and template masking are exactly those of the real model, with no network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from deita_train.templates import install_chat_template


ARCHS = ("mistral", "llama")
VOCAB_SIZE = 32000  # Mistral-7B-v0.1 and LLaMA share this vocabulary size


def mistral_tokenizer_model() -> Path:
    """Path of the Mistral-7B-v0.1 SentencePiece model inside the installed `mistral-common`."""
    import mistral_common

    path = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
    if not path.is_file():
        raise FileNotFoundError(f"mistral-common does not ship {path}; install mistral-common==1.13.1")
    return path


def load_mistral_tokenizer(work_dir: str | Path) -> Any:
    """The real Mistral-7B tokenizer (legacy LLaMA SentencePiece: BOS `<s>`, EOS `</s>`) with the project template."""
    from transformers import AutoTokenizer

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mistral_tokenizer_model(), work_dir / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "model_max_length": 2048,
    }
    (work_dir / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(work_dir)
    return install_chat_template(tokenizer)


def tiny_config(arch: str = "mistral", **overrides: Any) -> Any:
    """A small config of the real architecture: 2 layers, hidden 64, GQA, the full 32k vocabulary."""
    from transformers import LlamaConfig, MistralConfig

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    common = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    common.update(overrides)
    if arch == "mistral":
        return MistralConfig(sliding_window=None, **common)
    return LlamaConfig(**common)


def make_tiny_checkpoint(out_dir: str | Path, arch: str = "mistral", seed: int = 0, **config_overrides: Any) -> Path:
    """Write a small random-weight causal LM checkpoint loadable by `from_pretrained`.

    Deterministic for a given (arch, seed, overrides): weights come from a seeded generator. The
    directory holds config, safetensors weights, generation config (stops at `</s>`) and the real
    Mistral tokenizer with the vicuna_v1.1 chat template.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = tiny_config(arch, **config_overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out_dir)
    tokenizer = load_mistral_tokenizer(out_dir / ".tokenizer_src")
    tokenizer.save_pretrained(out_dir)
    shutil.rmtree(out_dir / ".tokenizer_src", ignore_errors=True)
    return out_dir
