"""Scoring: digit ids, the expected-score formula against a plain forward pass, truncation, per-turn records."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch
from scipy.special import softmax

from deita_train.conversations import turn_pairs
from deita_train.jsonl import read_jsonl, write_jsonl
from deita_train.scorer_prompts import complexity_prompt, quality_prompt
from deita_train.scoring import (
    TRUNCATION_MARKER,
    PromptBuilder,
    PromptTooLongError,
    ScoreConfig,
    Scorer,
    ScoringError,
    digit_token_ids,
    encode_prompt,
    expected_scores,
    score_pool,
    score_records,
)


MISTRAL_DIGITS = [28740, 28750, 28770, 28781, 28782, 28784]
SPACE_TOKEN = 28705  # SentencePiece "▁"


@pytest.fixture(scope="module")
def scorer_dirs(tmp_path_factory):
    """Two different tiny scorers; initializer_range 0.2 spreads their scores over 1..6 so mistakes show."""
    from deita_train.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("scorers")
    return (
        make_tiny_checkpoint(root / "complexity", seed=1, initializer_range=0.2),
        make_tiny_checkpoint(root / "quality", seed=2, initializer_range=0.2),
    )


@pytest.fixture(scope="module")
def model_tok(scorer_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(scorer_dirs[0], dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(scorer_dirs[0])


def reference_score(model, tokenizer, prompt: str) -> float:
    """The original's formula on one unpadded sequence: full logits, last position, scipy softmax over six."""
    ids = torch.tensor([tokenizer.encode(prompt)])
    with torch.no_grad():
        logits = model(ids).logits[0, -1].double().numpy()
    return float(softmax(logits[MISTRAL_DIGITS]) @ np.arange(1, 7))


def varied_prompts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = "the cat sat on a mat while quantum fields shimmer 42 times über naïve 数据 code { } def".split()
    out = []
    for i in range(n):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
        out.append(
            complexity_prompt(text) if i % 2 else quality_prompt(text[: len(text) // 2], text[len(text) // 2 :])
        )
    return out


def test_digit_ids_match_known_mistral_ids(mistral_tokenizer):
    assert digit_token_ids(mistral_tokenizer) == MISTRAL_DIGITS
    assert mistral_tokenizer.convert_ids_to_tokens(MISTRAL_DIGITS) == list("123456")


def test_prompt_trailing_space_is_its_own_token(mistral_tokenizer):
    for prompt in (complexity_prompt("Write a poem."), quality_prompt("Write a poem.", "Roses are red.")):
        ids = encode_prompt(mistral_tokenizer, prompt)
        assert ids[0] == mistral_tokenizer.bos_token_id
        assert ids[-1] == SPACE_TOKEN
        assert mistral_tokenizer.encode(prompt + "4") == ids + [28781]


class _MergingTokenizer:
    """A BPE-like tokenizer that glues the space to the digit (' 1' is one token): unusable as a Deita scorer."""

    eos_token_id = 2

    def encode(self, text):
        ids = [1]
        for i, ch in enumerate(text):
            if ch == " " and i + 1 < len(text) and text[i + 1].isdigit():
                continue
            ids.append(1000 + ord(ch) + (500 if i and text[i - 1] == " " and ch.isdigit() else 0))
        return ids

    def convert_tokens_to_ids(self, token):
        return 1000 + ord(token)

    def convert_ids_to_tokens(self, ids):
        return [str(i) for i in ids]


def test_digit_ids_fail_loudly_when_space_and_digit_merge():
    with pytest.raises(ScoringError, match="trailing space"):
        digit_token_ids(_MergingTokenizer())


def test_encode_prompt_refuses_a_tokenizer_that_appends_eos(tiny_mistral):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_mistral, add_eos_token=True)
    with pytest.raises(ScoringError, match="EOS"):
        encode_prompt(tok, complexity_prompt("hi"))


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 3, 8, 64])
def test_expected_scores_equal_per_sample_forward(model_tok, padding_side, batch_size):
    model, tok = model_tok
    prompts = varied_prompts(24)
    ref = np.array([reference_score(model, tok, p) for p in prompts])
    assert ref.std() > 0.1  # the scores differ enough that a wrong position or mask would show
    got = np.array(expected_scores(model, tok, prompts, batch_size=batch_size, padding_side=padding_side))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert ((got >= 1) & (got <= 6)).all()


def test_expected_scores_do_not_depend_on_order(model_tok):
    model, tok = model_tok
    prompts = varied_prompts(20, seed=3)
    base = expected_scores(model, tok, prompts, batch_size=5)
    perm = list(range(len(prompts)))
    random.Random(0).shuffle(perm)
    shuffled = expected_scores(model, tok, [prompts[i] for i in perm], batch_size=5)
    np.testing.assert_allclose([shuffled[perm.index(i)] for i in range(len(prompts))], base, atol=1e-5)


def test_non_finite_logits_raise_instead_of_a_default_score(model_tok):
    model, tok = model_tok
    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.lm_head.weight[MISTRAL_DIGITS[2]] = float("nan")
    with pytest.raises(ScoringError, match="non-finite"):
        expected_scores(broken, tok, [complexity_prompt("hello")])


# ------------------------------------------------------------------------------------ truncation


def test_short_prompts_are_not_truncated(mistral_tokenizer):
    b = PromptBuilder(mistral_tokenizer, max_length=2048)
    tp = b.quality("What is 2+2?", "4")
    assert not tp.truncated
    assert tp.token_ids == mistral_tokenizer.encode(quality_prompt("What is 2+2?", "4"))


def test_complexity_truncation_keeps_the_instruction_head_and_the_template(mistral_tokenizer):
    b = PromptBuilder(mistral_tokenizer, max_length=80)
    instruction = "BEGIN " + " ".join(f"w{i}" for i in range(300)) + " END"
    tp = b.complexity(instruction)
    text = mistral_tokenizer.decode(tp.token_ids, skip_special_tokens=True)
    assert tp.truncated and tp.n_tokens_full > 80 >= len(tp.token_ids) > 70
    assert "BEGIN w0 w1" in text and "END" not in text
    assert tp.token_ids[-5:] == mistral_tokenizer.encode(complexity_prompt("x"))[-5:]


def test_quality_truncation_keeps_response_head_and_tail(mistral_tokenizer):
    b = PromptBuilder(mistral_tokenizer, max_length=120)
    instruction = "QSTART " + "question " * 200 + "QEND"
    response = "RSTART " + "answer " * 400 + "REND"
    tp = b.quality(instruction, response)
    text = mistral_tokenizer.decode(tp.token_ids, skip_special_tokens=True)
    assert tp.truncated and len(tp.token_ids) <= 120
    assert "QSTART" in text and "QEND" not in text
    assert "RSTART" in text and "REND" in text and TRUNCATION_MARKER in text
    assert text.index("RSTART") < text.index(TRUNCATION_MARKER) < text.index("REND")
    assert tp.token_ids[-6:] == mistral_tokenizer.encode(quality_prompt("x", "y"))[-6:]
    # a long instruction is capped at about a third of the content budget; the response gets the rest
    n_instr = text.split("#Response#:")[0].count("question")
    n_resp = text.split("#Response#:")[1].count("answer")
    assert n_resp > n_instr > 5


def test_quality_truncation_gives_a_short_instruction_all_it_needs(mistral_tokenizer):
    b = PromptBuilder(mistral_tokenizer, max_length=100)
    tp = b.quality("Tell me everything about owls, please.", "Owls " * 500)
    text = mistral_tokenizer.decode(tp.token_ids, skip_special_tokens=True)
    assert tp.truncated and "Tell me everything about owls, please." in text


def test_reject_policy_and_impossible_budget(mistral_tokenizer):
    with pytest.raises(PromptTooLongError):
        PromptBuilder(mistral_tokenizer, max_length=50, truncation="reject").complexity("word " * 100)
    with pytest.raises(ScoringError, match="no room"):
        PromptBuilder(mistral_tokenizer, max_length=20).complexity("word " * 100)


# ------------------------------------------------------------------------------------ records


def _records():
    return [
        {
            "id": "a",
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "What is a hash table?"},
                {"from": "gpt", "value": "A map from keys to buckets."},
                {"from": "human", "value": "And a tree?"},
            ],
            "source": "demo",
        },
        {
            "id": "b",
            "conversations": [
                {"from": "human", "value": "Write a haiku. " * 30},
                {"from": "gpt", "value": "Autumn moon rises " * 60},
            ],
        },
    ]


def _scorer(path, **kw):
    return Scorer.load(str(path), batch_size=kw.pop("batch_size", 4), **kw)


def test_score_records_per_turn_as_the_original(scorer_dirs):
    comp, qual = _scorer(scorer_dirs[0]), _scorer(scorer_dirs[1])
    records = _records()
    scored, rejects = score_records(records, comp, qual)
    assert rejects == [] and [r["id"] for r in scored] == ["a", "b"]
    a = scored[0]
    assert a["source"] == "demo" and a["conversations"] == records[0]["conversations"]
    pairs = turn_pairs(records[0])
    assert pairs[1] == ("And a tree?", "")  # a trailing human turn pairs with an empty response
    assert len(a["complexity_scores"]) == len(a["quality_scores"]) == 2
    assert a["complexity_truncated"] == a["quality_truncated"] == [False, False]
    want_c = [reference_score(comp.model, comp.tokenizer, complexity_prompt(h)) for h, _ in pairs]
    want_q = [reference_score(qual.model, qual.tokenizer, quality_prompt(h, g)) for h, g in pairs]
    np.testing.assert_allclose(a["complexity_scores"], want_c, atol=1e-5)
    np.testing.assert_allclose(a["quality_scores"], want_q, atol=1e-5)
    assert a["complexity_scores"] != a["quality_scores"]  # two different scorers


def test_score_records_flags_or_rejects_long_turns(scorer_dirs):
    records = _records()
    comp = _scorer(scorer_dirs[0], max_length=120)
    scored, rejects = score_records(records, complexity=comp)
    assert rejects == []
    assert scored[1]["complexity_truncated"] == [True] and "quality_scores" not in scored[1]
    strict = _scorer(scorer_dirs[0], max_length=120, truncation="reject")
    scored, rejects = score_records(records, quality=strict)
    assert [r["id"] for r in scored] == ["a"]
    assert rejects[0]["id"] == "b" and rejects[0]["scorer"] == "quality" and "turn 0" in rejects[0]["reason"]


def test_score_records_rejects_non_finite_scores(scorer_dirs):
    comp = _scorer(scorer_dirs[0])
    with torch.no_grad():
        comp.model.lm_head.weight[MISTRAL_DIGITS[0]] = float("inf")
        comp.model.lm_head.weight[MISTRAL_DIGITS[0], 0] = -float("inf")  # inf - inf -> NaN logits
    scored, rejects = score_records(_records(), complexity=comp)
    assert scored == [] and len(rejects) == 2 and all("non-finite" in r["reason"] for r in rejects)


# ------------------------------------------------------------------------------------ pool job


def test_score_pool_writes_scored_rejects_and_manifest(scorer_dirs, tmp_path):
    pool = tmp_path / "pool.jsonl"
    rows = _records() + [{"id": "bad", "conversations": [{"from": "gpt", "value": "no question"}]}]
    rows += [{"id": f"r{i}", "conversations": [{"from": "human", "value": f"q{i} " * (i + 1)}]} for i in range(7)]
    write_jsonl(pool, rows)
    cfg = ScoreConfig(
        input_path=str(pool),
        output_dir=str(tmp_path / "out"),
        complexity_model=str(scorer_dirs[0]),
        quality_model=str(scorer_dirs[1]),
        max_length=120,
        chunk_size=3,
        batch_size=2,
    )
    counts = score_pool(cfg)
    assert counts["in"] == 10 and counts["scored"] == 9 and counts["rejected"] == 1 == counts["rejected_load"]
    assert counts["turns_scored"] == 10 and counts["complexity_truncated_turns"] == 1
    scored = read_jsonl(tmp_path / "out" / "scored.jsonl")
    assert [r["id"] for r in scored] == [r["id"] for r in rows if r["id"] != "bad"]  # pool order
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [(r["id"], r["stage"]) for r in rejects] == [("bad", "load")]
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counts"] == counts and set(manifest["scorer"]) == {"complexity", "quality"}
    assert manifest["scorer"]["quality"]["model"] == str(scorer_dirs[1])
    # every chunk is saved: a rerun does no scoring work and writes the same file
    before = (tmp_path / "out" / "scored.jsonl").read_bytes()
    assert score_pool(cfg) == counts
    assert (tmp_path / "out" / "scored.jsonl").read_bytes() == before


def test_score_pool_rejects_over_long_records_under_the_reject_policy(scorer_dirs, tmp_path):
    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, _records())
    cfg = ScoreConfig(
        input_path=str(pool),
        output_dir=str(tmp_path / "out"),
        quality_model=str(scorer_dirs[1]),
        max_length=120,
        truncation="reject",
    )
    counts = score_pool(cfg)
    assert (counts["in"], counts["scored"], counts["rejected_score"], counts["rejected_load"]) == (2, 1, 1, 0)
    (reject,) = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert reject["id"] == "b" and reject["stage"] == "score" and "max_length=120" in reject["reason"]
    assert reject["record"]["conversations"] == _records()[1]["conversations"]
    (scored,) = read_jsonl(tmp_path / "out" / "scored.jsonl")
    assert "quality_scores" in scored and "complexity_scores" not in scored


def test_score_pool_refuses_to_mix_runs_with_other_settings(scorer_dirs, tmp_path):
    from deita_train.sharded import PlanMismatchError

    pool = tmp_path / "pool.jsonl"
    write_jsonl(pool, _records())
    common = dict(input_path=str(pool), output_dir=str(tmp_path / "out"), complexity_model=str(scorer_dirs[0]))
    score_pool(ScoreConfig(**common, max_length=2048))
    with pytest.raises(PlanMismatchError):
        score_pool(ScoreConfig(**common, max_length=100))


def test_config_needs_a_scorer():
    with pytest.raises(ValueError, match="complexity_model"):
        ScoreConfig(input_path="x.jsonl", output_dir="out")


def test_vllm_logprob_parsing_never_invents_a_score():
    from deita_train.scoring import expected_from_logits
    from deita_train.vllm_backend import digit_logprobs

    class Logprob:
        def __init__(self, v):
            self.logprob = v

    step = {tid: Logprob(-float(i)) for i, tid in enumerate(MISTRAL_DIGITS)}
    row = digit_logprobs(step, MISTRAL_DIGITS)
    assert row == [0.0, -1.0, -2.0, -3.0, -4.0, -5.0]
    assert expected_from_logits(np.array([row]))[0] == pytest.approx(softmax(row) @ np.arange(1, 7))
    del step[MISTRAL_DIGITS[5]]
    assert np.isnan(expected_from_logits(np.array([digit_logprobs(step, MISTRAL_DIGITS)]))[0])


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_full_vocabulary_fallback_gives_the_same_scores(model_tok, monkeypatch, padding_side):
    """Models that rescale or cap logits take the whole-vocabulary path; it must agree with the digit-rows one."""
    from deita_train import scoring

    model, tok = model_tok
    prompts = [complexity_prompt("Why is the sky blue?"), quality_prompt("Name a colour.", "Blue, like the sea.")]
    fast = expected_scores(model, tok, prompts, batch_size=2, padding_side=padding_side)
    monkeypatch.setattr(scoring, "_digit_head", lambda model, digit_ids: None)
    slow = expected_scores(model, tok, prompts, batch_size=2, padding_side=padding_side)
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    assert len(set(np.round(fast, 4))) == 2, "two different prompts, two different scores"
