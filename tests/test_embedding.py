"""The embedder: what is embedded, where the vector is taken, batching, and the on-disk layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deita_train.config import parse_config
from deita_train.embedding import (
    CausalLMEmbedder,
    EmbedConfig,
    conversation_text,
    embed_pool,
    length_sorted_batches,
    load_embedder,
    load_embeddings,
    to_float16,
    tokenize_for_embedding,
)
from deita_train.jsonl import read_jsonl, write_jsonl
from deita_train.sharded import DistInfo, PlanMismatchError
from deita_train.templates import render_conversation


ROOT = Path(__file__).resolve().parents[1]


def _conv(*turns: str, system: str | None = None) -> list[dict[str, str]]:
    out = [{"from": "system", "value": system}] if system else []
    out += [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(turns)]
    return out


RECORDS = [
    {"id": "short", "conversations": _conv("Hi", "Hello!")},
    {"id": "two-turns", "conversations": _conv("What is 2+2?", "It is 4.", "And 3+3?", "Six, since 3+3=6.")},
    {
        "id": "system",
        "conversations": _conv("Tell me a joke.", "Why did the chicken cross the road?", system="Be brief."),
    },
    {"id": "trailing-human", "conversations": _conv("Name a colour.", "Blue.", "Another one?")},
    {"id": "long", "conversations": _conv("Write a long story. " * 20, "Once upon a time, " * 60)},
]


@pytest.fixture(scope="module")
def loaded(tiny_mistral):
    return load_embedder(str(tiny_mistral))


@pytest.fixture(scope="module")
def embedder(loaded):
    model, tokenizer = loaded
    return CausalLMEmbedder(model, tokenizer, max_length=2048, batch_size=8)


def test_base_model_output_is_the_causal_lms_last_hidden_state_after_the_final_norm(tiny_mistral, loaded):
    from transformers import AutoModelForCausalLM

    base, tokenizer = loaded
    assert not hasattr(base, "lm_head") and base.training is False
    causal = AutoModelForCausalLM.from_pretrained(tiny_mistral, dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer(conversation_text(RECORDS[1]))["input_ids"]])
    captured = {}
    hook = causal.model.norm.register_forward_hook(lambda mod, inp, out: captured.setdefault("norm", out))
    try:
        with torch.inference_mode():
            ours = base(input_ids=ids).last_hidden_state
            theirs = causal(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    finally:
        hook.remove()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours, captured["norm"], rtol=0, atol=1e-6)  # the final norm's output


def test_embedded_text_is_the_vicuna_rendering_with_bos_ending_on_eos(loaded):
    _, tokenizer = loaded
    text = conversation_text(RECORDS[2])
    assert text == render_conversation(RECORDS[2]["conversations"])
    assert text.startswith("Be brief. USER: Tell me a joke. ASSISTANT:") and text.endswith("</s>")
    (ids,), full = tokenize_for_embedding([text], tokenizer, 2048)
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id and full[0] == len(ids)


def test_trailing_human_turn_and_truncation_end_elsewhere_and_are_reported(embedder, loaded):
    _, tokenizer = loaded
    texts = [conversation_text(r) for r in RECORDS]
    assert texts[3].endswith("USER: Another one? ")  # no reply, no </s>: the vector sits on the separator
    result = embedder.embed(texts)
    assert result.ends_with_eos.tolist() == [True, True, True, False, True]
    assert not result.truncated.any()

    short = CausalLMEmbedder(embedder.model, tokenizer, max_length=32, batch_size=2)
    cut = short.embed(texts)
    full_ids, _ = tokenize_for_embedding([texts[4]], tokenizer, 10_000)
    assert cut.full_tokens.tolist() == result.n_tokens.tolist()
    assert cut.n_tokens.tolist() == np.minimum(result.n_tokens, 32).tolist()
    assert cut.truncated.tolist() == (result.n_tokens > 32).tolist() and cut.truncated[4]
    assert cut.n_tokens[4] == 32 and cut.full_tokens[4] == len(full_ids[0]) and not cut.ends_with_eos[4]
    # the vector of a truncated conversation is the one at its 32nd token (the last kept)
    np.testing.assert_allclose(cut.vectors[4], embedder.embed_token_ids([full_ids[0][:32]])[0], atol=1e-5, rtol=0)


def test_padding_does_not_change_a_vector(embedder, loaded):
    model, tokenizer = loaded
    texts = [conversation_text(r) for r in RECORDS]
    batched = embedder.embed(texts).vectors  # padded batches
    single = np.stack([CausalLMEmbedder(model, tokenizer, batch_size=1).embed([t]).vectors[0] for t in texts])
    capped = CausalLMEmbedder(model, tokenizer, batch_size=8, max_tokens_per_batch=64).embed(texts).vectors
    assert batched.dtype == np.float32 and batched.shape == (len(texts), model.config.hidden_size)
    np.testing.assert_allclose(batched, single, atol=1e-5, rtol=0)
    np.testing.assert_allclose(capped, single, atol=1e-5, rtol=0)
    assert np.abs(single[0] - single[1]).max() > 1e-2  # different conversations, different vectors


@pytest.mark.parametrize(
    ("lengths", "batch_size", "cap"),
    [([5, 1, 9, 9, 3, 7, 2], 3, None), ([5, 1, 9, 9, 3, 7, 2], 8, 20), ([100, 3, 3, 3], 4, 10), ([], 2, None)],
)
def test_length_sorted_batches(lengths, batch_size, cap):
    batches = length_sorted_batches(lengths, batch_size, cap)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    for b in batches:
        assert len(b) <= batch_size
        if cap is not None and len(b) > 1:
            assert len(b) * max(lengths[i] for i in b) <= cap
    if cap == 10:
        assert batches[0] == [0]  # a row over the cap still gets a batch of its own


def test_float16_overflow_is_refused():
    ok = to_float16(np.ones((2, 3), dtype=np.float32), ["a", "b"])
    assert ok.dtype == np.float16
    with pytest.raises(ValueError, match="'b'"):
        to_float16(np.array([[1.0, 2.0], [1e6, 0.0]], dtype=np.float32), ["a", "b"])


def _pool(path: Path) -> list[dict]:
    rows = [dict(r, extra=i) for i, r in enumerate(RECORDS)]
    rows.insert(2, {"id": "broken", "conversations": [{"from": "gpt", "value": "I speak first."}]})
    write_jsonl(path, rows)
    return rows


def test_embed_pool_writes_a_memory_mappable_float16_matrix_with_ids(tiny_mistral, embedder, tmp_path):
    _pool(tmp_path / "pool.jsonl")
    config = EmbedConfig(
        input_path=str(tmp_path / "pool.jsonl"),
        output_dir=str(tmp_path / "emb"),
        model_name_or_path=str(tiny_mistral),
        max_length=48,
        chunk_size=2,
        batch_size=2,
    )
    counts = embed_pool(config, dist=DistInfo(0, 1))
    direct = CausalLMEmbedder(embedder.model, embedder.tokenizer, max_length=48).embed(
        [conversation_text(r) for r in RECORDS]
    )
    n_cut = int(direct.truncated.sum())
    assert 1 <= n_cut < 5 and not direct.truncated[0] and direct.truncated[4]
    assert counts == {
        "in": 6,
        "rejected": 1,
        "embedded": 5,
        "dim": 64,
        "truncated": n_cut,
        "not_ending_eos": n_cut + int(not direct.truncated[3]),  # the trailing-human record never ends on </s>
    }
    ids, matrix = load_embeddings(tmp_path / "emb")
    assert ids == [r["id"] for r in RECORDS]  # input order, not the length-sorted work order
    assert isinstance(matrix, np.memmap) and matrix.dtype == np.float16 and matrix.shape == (5, 64)
    np.testing.assert_allclose(matrix.astype(np.float32), direct.vectors, atol=2e-3, rtol=1e-3)
    tokens = np.load(tmp_path / "emb" / "tokens.npy")
    assert tokens[:, 0].tolist() == direct.n_tokens.tolist() and tokens[:, 1].tolist() == direct.full_tokens.tolist()
    rejects = read_jsonl(tmp_path / "emb" / "rejects.jsonl")
    assert [r["id"] for r in rejects] == ["broken"] and "human" in rejects[0]["reason"]
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert manifest["step"] == "embed" and manifest["counts"] == counts
    assert manifest["embedder"]["dim"] == 64 and manifest["embedder"]["max_length"] == 48
    assert manifest["inputs"][0]["sha256"]

    # a finished job is not redone; a different job in the same folder is refused
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "emb" / "chunks").iterdir()}
    assert embed_pool(config, dist=DistInfo(0, 1)) == counts
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "emb" / "chunks").iterdir()} == before
    config.max_length = 64
    with pytest.raises(PlanMismatchError):
        embed_pool(config, dist=DistInfo(0, 1))


def test_chunks_can_be_dropped_after_the_merge(tiny_mistral, tmp_path):
    _pool(tmp_path / "pool.jsonl")
    config = EmbedConfig(
        input_path=str(tmp_path / "pool.jsonl"),
        output_dir=str(tmp_path / "emb"),
        model_name_or_path=str(tiny_mistral),
        chunk_size=4,
        keep_chunks=False,
    )
    counts = embed_pool(config, dist=DistInfo(0, 1))
    assert not (tmp_path / "emb" / "chunks").exists() and counts["embedded"] == 5
    assert embed_pool(config, dist=DistInfo(0, 1)) == counts  # recognised as finished from its manifest


def test_sentence_transformers_backend(tmp_path):
    pytest.importorskip("sentence_transformers")
    from deita_train.embedding import SentenceTransformerEmbedder

    model_dir = tmp_path / "st"
    _tiny_sentence_transformer(model_dir)
    emb = SentenceTransformerEmbedder(str(model_dir), max_length=64, batch_size=2)
    result = emb.embed([conversation_text(r) for r in RECORDS])
    assert result.vectors.shape == (len(RECORDS), emb.dim) and np.isfinite(result.vectors).all()
    assert result.truncated[4] and not result.truncated[0]


def _tiny_sentence_transformer(out_dir: Path) -> None:
    """A random BERT wrapped as a sentence-transformers model (mean pooling), written locally."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz:.!?"]
    (out_dir / "bert").mkdir(parents=True)
    (out_dir / "bert" / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(str(out_dir / "bert" / "vocab.txt")).save_pretrained(out_dir / "bert")
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    config.intermediate_size = 64
    BertModel(config).save_pretrained(out_dir / "bert")
    word = models.Transformer(str(out_dir / "bert"), max_seq_length=128)
    SentenceTransformer(modules=[word, models.Pooling(word.get_word_embedding_dimension())]).save(str(out_dir))


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "embed").glob("*.yaml")), ids=lambda p: p.name)
def test_embed_recipes_parse(recipe):
    (config,) = parse_config(EmbedConfig, args=["--config", str(recipe)])
    assert config.max_length == 2048 and config.output_dir
