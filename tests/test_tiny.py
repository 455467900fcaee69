"""The embedded default: a small random checkpoint with the real Mistral tokenizer, deterministic, offline."""

import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from deita_train.templates import VICUNA_CHAT_TEMPLATE
from deita_train.tiny import make_tiny_checkpoint


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_checkpoint_loads_and_carries_the_template(tiny_mistral):
    tok = AutoTokenizer.from_pretrained(tiny_mistral)
    model = AutoModelForCausalLM.from_pretrained(tiny_mistral)
    assert model.config.model_type == "mistral" and model.config.vocab_size == len(tok) == 32000
    assert tok.chat_template == VICUNA_CHAT_TEMPLATE
    assert (tok.bos_token, tok.eos_token, tok.padding_side) == ("<s>", "</s>", "right")
    assert model.generation_config.eos_token_id == tok.eos_token_id == 2
    assert json.loads((tiny_mistral / "config.json").read_text())["num_hidden_layers"] == 2
    with torch.inference_mode():
        out = model(**tok(["Hello there"], return_tensors="pt"))
    assert out.logits.shape[-1] == 32000 and torch.isfinite(out.logits).all()


def test_real_mistral_tokenizer_ids(mistral_tokenizer):
    tok = mistral_tokenizer
    assert [tok.convert_tokens_to_ids(str(d)) for d in range(1, 7)] == [28740, 28750, 28770, 28781, 28782, 28784]
    assert tok("Hello")["input_ids"] == [1, 22557]
    assert tok.convert_ids_to_tokens(tok("x: ")["input_ids"])[-1] == "▁"


def test_deterministic_per_arch_and_seed(tmp_path, tiny_mistral):
    again = make_tiny_checkpoint(tmp_path / "again", arch="mistral")
    assert _digest(again) == _digest(tiny_mistral)
    other = make_tiny_checkpoint(tmp_path / "seed1", arch="mistral", seed=1)
    assert _digest(other) != _digest(tiny_mistral)


def test_llama_arch(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "llama", arch="llama")
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "llama"
    assert AutoTokenizer.from_pretrained(path).chat_template == VICUNA_CHAT_TEMPLATE


def test_unknown_arch():
    with pytest.raises(ValueError, match="arch must be one of"):
        make_tiny_checkpoint("/nonexistent", arch="gpt2")
