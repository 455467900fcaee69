"""UltraFeedback sampler: the original's draw, vicuna_v1.1 rendering equal to SFT, rejects and refill."""

from __future__ import annotations

import hashlib
import json
import random
import runpy
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from trl.data_utils import common_prefix_length

from deita_train.config import parse_config
from deita_train.jsonl import read_jsonl, write_jsonl
from deita_train.templates import assistant_spans, render_conversation, tokenize_conversation
from deita_train.ultrafeedback import (
    REASONS,
    LengthCounter,
    PairError,
    UltraFeedbackConfig,
    candidate_order,
    demo_ultrafeedback_rows,
    make_pair,
    original_sample_indices,
    permutation_prefix_matches,
    render_pair,
    sample_ultrafeedback,
    select_pairs,
    write_demo_ultrafeedback,
)


REPO = Path(__file__).resolve().parents[1]


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def row(prompt: str, chosen: str, rejected: str, *, history: list[dict] | None = None, pid: str | None = None) -> dict:
    head = [*(history or []), msg("user", prompt)]
    return {
        "prompt": prompt,
        "prompt_id": pid or hashlib.sha256(prompt.encode()).hexdigest(),
        "chosen": [*head, msg("assistant", chosen)],
        "rejected": [*head, msg("assistant", rejected)],
        "messages": [*head, msg("assistant", chosen)],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_mistral, mistral_tokenizer):
    """The tiny checkpoint's path and tokenizer: the real Mistral-7B tokenizer with the project template."""
    return tiny_mistral, mistral_tokenizer


# --------------------------------------------------------------------------- sampling order


def test_first_candidates_are_the_originals_random_sample():
    n, k = 61_135, 10_000  # train_prefs size, Deita's N
    random.seed(42)
    expected = random.sample(range(n), k)
    assert original_sample_indices(n, k, 42) == expected
    assert list(islice(candidate_order(n, k, 42), k)) == expected
    # for these sizes the walk is exactly one seeded permutation, whose prefix is the original sample
    assert permutation_prefix_matches(n, k)
    random.seed(42)
    assert list(candidate_order(n, k, 42)) == random.sample(range(n), n)


def test_permutation_prefix_rule_matches_python():
    rng = random.Random(0)
    cases = [(100, 5), (100, 6), (30, 2), (5000, 10), (61_135, 10_000), (200_000, 10_000)]
    cases += [(m, rng.randint(0, m)) for m in (rng.randint(1, 2000) for _ in range(120))]
    for n, k in cases:
        random.seed(42)
        prefix = random.sample(range(n), n)[:k]
        random.seed(42)
        same = random.sample(range(n), k) == prefix
        if permutation_prefix_matches(n, k):
            assert same, (n, k)
        # where the rule does not hold, the walk still starts with the original sample and visits every row once
        order = list(candidate_order(n, k, 42))
        assert order[:k] == original_sample_indices(n, k, 42) and sorted(order) == list(range(n))
    assert not permutation_prefix_matches(100_000, 5)


def test_no_refill_stops_at_the_original_sample():
    assert list(candidate_order(50, 10, 42, refill=False)) == original_sample_indices(50, 10, 42)


# --------------------------------------------------------------------------- rendering = SFT


CONVERSATIONS = [
    [msg("user", "What is 2 + 2?"), msg("assistant", "4.")],
    [
        msg("user", "Hi"),
        msg("assistant", "Hello! How can I help?"),
        msg("user", "Name a prime."),
        msg("assistant", "Seven."),
    ],
    [
        msg("system", "You answer in one sentence."),
        msg("user", "Why is the sky blue?"),
        msg("assistant", "Rayleigh scattering."),
        msg("user", "And sunsets?"),
        msg("assistant", "Longer paths scatter the blue away, leaving red."),
    ],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS, ids=["single", "multi", "system+multi"])
def test_dpo_prompt_is_the_sft_text_up_to_the_reply(conversation):
    prompt_turns, reply = conversation[:-1], conversation[-1]["content"]
    prompt, chosen, rejected = render_pair(prompt_turns, reply, "Something else.")
    sft = render_conversation(conversation)
    assert prompt + chosen == sft
    assert prompt + rejected == render_conversation([*prompt_turns, msg("assistant", "Something else.")])
    assert chosen == " " + reply + "</s>" and rejected == " Something else.</s>"
    assert prompt.endswith(" ASSISTANT:") and sft.startswith(prompt)
    text, spans = assistant_spans(conversation)  # where SFT puts the loss of the last reply
    assert text == sft and spans[-1] == (len(prompt), len(sft))
    assert "user:" not in prompt and "assistant:" not in prompt  # the original's lowercase roles
    if conversation[0]["role"] == "system":
        assert prompt.startswith("You answer in one sentence. USER:")


def test_pair_rows_are_rendered_from_the_dataset_schema(tokenizer_dir):
    history = [msg("system", "Be kind."), msg("user", "Hello"), msg("assistant", "Hi there.")]
    pair = make_pair(row("Tell me a joke.", "Why did the chicken...", "No.", history=history, pid="pid-1"), 0)
    assert set(pair) == {"id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected"}
    assert pair["id"] == "pid-1" and pair["score_chosen"] == 9.0 and pair["score_rejected"] == 2.0
    full = [*history, msg("user", "Tell me a joke."), msg("assistant", "Why did the chicken...")]
    assert pair["prompt"] + pair["chosen"] == render_conversation(full)
    # the chat template saved into every tokenizer renders the same prompt (after BOS)
    _, tok = tokenizer_dir
    templated = tok.apply_chat_template(full[:-1], add_generation_prompt=True, tokenize=False)
    assert templated == tok.bos_token + pair["prompt"]
    # and the SFT tokenization supervises exactly the tokens of the DPO completion
    enc = tokenize_conversation(full, tok, max_length=None)
    labelled = [t for t, lab in zip(enc["input_ids"], enc["labels"]) if lab != -100]
    prompt_ids, full_ids = tok(pair["prompt"])["input_ids"], tok(pair["prompt"] + pair["chosen"])["input_ids"]
    assert common_prefix_length(prompt_ids, full_ids) == len(prompt_ids)  # TRL splits at the prompt's end
    completion = full_ids[len(prompt_ids) :]
    assert enc["input_ids"] == full_ids and labelled[-len(completion) :] == completion
    assert completion[-1] == tok.eos_token_id


def test_explicit_prompt_formats_give_the_same_pair():
    implicit = make_pair(row("Q?", "Good.", "Bad.", history=[msg("system", "S")], pid="x"), 0)
    explicit = {  # TRL's explicit-prompt preference format
        "prompt_id": "x",
        "prompt": [msg("system", "S"), msg("user", "Q?")],
        "chosen": [msg("assistant", "Good.")],
        "rejected": [msg("assistant", "Bad.")],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }
    assert make_pair(explicit, 0) == implicit
    with pytest.raises(PairError) as info:
        make_pair({**explicit, "prompt": [msg("system", "S"), msg("user", "")]}, 0)
    assert (info.value.reason, info.value.field) == ("empty_text", "prompt[1].content")


def test_bare_string_replies_use_the_prompt_field():
    pair = make_pair({"prompt": "Q?", "prompt_id": "x", "chosen": "Good.", "rejected": "Bad."}, 3)
    with pytest.raises(PairError) as info:
        make_pair({"prompt": " ", "chosen": "Good.", "rejected": "Bad."}, 3)
    assert (info.value.reason, info.value.field) == ("empty_text", "prompt")
    assert pair["prompt"] + pair["chosen"] == render_conversation([msg("user", "Q?"), msg("assistant", "Good.")])
    assert make_pair({"prompt": "Q?", "chosen": "Good.", "rejected": "Bad."}, 3)["id"] == "row-3"


# --------------------------------------------------------------------------- checks


@pytest.mark.parametrize(
    ("bad", "reason", "field"),
    [
        (row("Q", "same", "same"), "identical_chosen_rejected", "rejected"),
        (row("Q", "same", " same\n"), "identical_chosen_rejected", "rejected"),
        (row("Q", "ok", "   "), "empty_text", "rejected"),
        (row("Q", "", "no"), "empty_text", "chosen"),
        (row(" ", "a", "b"), "empty_text", "chosen[0].content"),
        ({**row("Q", "a", "b"), "chosen": [msg("user", "Q")]}, "malformed_messages", "chosen[0].role"),
        ({**row("Q", "a", "b"), "rejected": "not a list"}, "prompt_mismatch", "rejected"),
        ({**row("Q", "a", "b"), "chosen": None}, "malformed_messages", "chosen"),
        ({**row("Q", "a", "b"), "chosen": [{"content": "Q"}]}, "malformed_messages", "chosen[0]"),
        (
            {**row("Q", "a", "b"), "chosen": [msg("user", "Q"), msg("assistant", 5)]},
            "malformed_messages",
            "chosen[1].content",
        ),
        (
            {**row("Q", "a", "b"), "rejected": [msg("user", "Other"), msg("assistant", "b")]},
            "prompt_mismatch",
            "rejected",
        ),
        (
            {
                **row("Q", "a", "b"),
                "chosen": [msg("tool", "Q"), msg("assistant", "a")],
                "rejected": [msg("tool", "Q"), msg("assistant", "b")],
            },
            "malformed_messages",
            "chosen[0].role",
        ),
        (
            {
                **row("Q", "a", "b"),
                "chosen": [msg("assistant", "x"), msg("assistant", "a")],
                "rejected": [msg("assistant", "x"), msg("assistant", "b")],
            },
            "malformed_messages",
            "chosen[0].role",
        ),
    ],
)
def test_bad_rows_are_rejected_with_a_reason(bad, reason, field):
    with pytest.raises(PairError) as info:
        make_pair(bad, 0)
    assert info.value.reason == reason and info.value.field == field
    assert reason in REASONS


def test_rejects_are_counted_and_refilled_from_the_same_permutation():
    rows = [row(f"Question {i}?", f"Good answer {i}.", f"Bad answer {i}.") for i in range(40)]
    for i in (3, 11, 17, 25):
        rows[i] = row(f"Question {i}?", "Same.", "Same.")
    rows[8] = row("Q" * 700, "a", "b")
    rows[9] = row("Q9", "a" * 1000, "b")
    pairs, rejects, counts = select_pairs(rows, 15, seed=42, max_prompt_tokens=600, max_length=900)
    order = list(candidate_order(40, 15, 42))
    bad = {3, 11, 17, 25, 8, 9}
    expected = [i for i in order if i not in bad][:15]
    assert [p["id"] for p in pairs] == [rows[i]["prompt_id"] for i in expected]
    walked = order[: order.index(expected[-1]) + 1]
    assert counts["sampled"] == len(walked) == counts["kept"] + counts["rejected"]
    assert {r["index"] for r in rejects} == bad & set(walked)
    by_reason = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    assert counts["rejected_by_reason"] == by_reason
    assert counts["length_unit"] == "chars" and counts["kept"] == 15
    assert counts["same_as_original_sample"] == (not bad & set(order[:15]))

    # without refill: the original sample minus its rejects
    pairs, _, counts = select_pairs(rows, 15, seed=42, refill=False, max_prompt_tokens=600, max_length=900)
    assert [p["id"] for p in pairs] == [rows[i]["prompt_id"] for i in order[:15] if i not in bad]
    assert counts["sampled"] == 15 and counts["refilled"] == 0


def test_clean_rows_give_exactly_the_original_sample_in_its_order():
    rows = [row(f"Question {i}?", f"Good {i}.", f"Bad {i}.") for i in range(300)]
    pairs, rejects, counts = select_pairs(rows, 50, seed=42)
    random.seed(42)
    idx = random.sample(range(len(rows)), 50)
    assert [p["id"] for p in pairs] == [rows[i]["prompt_id"] for i in idx]
    assert rejects == [] and counts["same_as_original_sample"] and counts["sampled"] == 50


def test_token_budgets_are_counted_with_the_tokenizer(tokenizer_dir):
    path, tok = tokenizer_dir
    rows = [row(f"Question number {i} about tokens?", f"Answer {i} " * (i + 1), "No.") for i in range(12)]
    lengths = LengthCounter(str(path))
    assert lengths.unit == "tokens"
    pairs_all, _, _ = select_pairs(rows, 12, lengths=lengths)
    prompt_len = {p["id"]: len(tok(p["prompt"])["input_ids"]) for p in pairs_all}
    full_len = {p["id"]: len(tok(p["prompt"] + p["chosen"])["input_ids"]) for p in pairs_all}
    limit_prompt = sorted(prompt_len.values())[6]
    limit_full = sorted(full_len.values())[8]
    pairs, rejects, counts = select_pairs(
        rows, 12, lengths=lengths, max_prompt_tokens=limit_prompt, max_length=limit_full
    )
    for p in pairs:
        assert prompt_len[p["id"]] <= limit_prompt and full_len[p["id"]] <= limit_full
    for r in rejects:
        if r["reason"] == "prompt_too_long":
            assert prompt_len[r["id"]] > limit_prompt
        else:
            assert r["reason"] == "pair_too_long" and full_len[r["id"]] > limit_full
    assert counts["kept"] == sum(1 for i in prompt_len if prompt_len[i] <= limit_prompt and full_len[i] <= limit_full)
    assert counts["length_unit"] == "tokens" and counts["rejected"] == 12 - counts["kept"] > 0


def test_duplicate_prompt_ids_stay_distinct():
    rows = [row("Same prompt?", "A.", "B.", pid="p"), row("Same prompt?", "C.", "D.", pid="p")]
    pairs, _, counts = select_pairs(rows, 2)
    assert sorted(p["id"] for p in pairs) in (["p", "p#0"], ["p", "p#1"]) and counts["ids_disambiguated"] == 1


# --------------------------------------------------------------------------- end to end


def test_sample_from_local_files_with_manifest(tmp_path, tokenizer_dir):
    path, _ = tokenizer_dir
    rows = demo_ultrafeedback_rows(30)
    jsonl, parquet = tmp_path / "uf.jsonl", tmp_path / "uf.parquet"
    write_jsonl(jsonl, rows)
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    results = []
    for i, src in enumerate((jsonl, parquet)):
        out = tmp_path / f"out{i}"
        cfg = UltraFeedbackConfig(
            dataset_name=str(src), output_dir=str(out), num_samples=12, tokenizer_name_or_path=str(path)
        )
        counts = sample_ultrafeedback(cfg)
        pairs = read_jsonl(out / "pairs.jsonl")
        manifest = json.loads((out / "manifest.json").read_text())
        assert len(pairs) == counts["kept"] == 12 and counts["length_unit"] == "tokens"
        assert len(read_jsonl(out / "rejects.jsonl")) == counts["rejected"]
        assert manifest["counts"] == counts and manifest["inputs"][0]["path"] == str(src)
        assert manifest["step"] == "sample_ultrafeedback" and manifest["template"] == "vicuna_v1.1"
        results.append(pairs)
    assert results[0] == results[1]
    ids = {r["prompt_id"]: r for r in rows}
    for p in results[0]:
        src_row = ids[p["id"]]
        assert p["prompt"] + p["chosen"] == render_conversation(src_row["chosen"])
        assert p["prompt"] + p["rejected"] == render_conversation(src_row["rejected"])


def test_demo_rows_follow_the_schema_and_the_tiny_recipe_runs(tmp_path):
    rows = demo_ultrafeedback_rows(25)
    assert rows == demo_ultrafeedback_rows(25)
    for r in rows:
        assert set(r) == {"prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"}
        assert (
            r["chosen"][0] == r["rejected"][0] == msg("user", r["prompt"]) and r["chosen"][-1]["role"] == "assistant"
        )
        assert r["prompt_id"] == hashlib.sha256(r["prompt"].encode()).hexdigest()
    assert len({r["prompt_id"] for r in demo_ultrafeedback_rows(200)}) == 200
    assert write_demo_ultrafeedback(tmp_path / "d.jsonl", 5) == tmp_path / "d.jsonl"
    assert len(read_jsonl(tmp_path / "d.jsonl")) == 5

    main = runpy.run_path(str(REPO / "data_prep" / "ultrafeedback.py"))["main"]
    out = tmp_path / "tiny"
    counts = main(["--config", str(REPO / "recipes/data/tiny-ultrafeedback.yaml"), "--output_dir", str(out)])
    assert counts["kept"] == 40 and counts["rejected_by_reason"] == {"identical_chosen_rejected": counts["rejected"]}
    assert counts["rejected"] > 0 and counts["refilled"] == counts["rejected"]
    assert (out / "demo-ultrafeedback.jsonl").exists()


def test_config_is_parsed_like_every_recipe(tmp_path):
    (cfg,) = parse_config(UltraFeedbackConfig, args=["--config", str(REPO / "recipes/data/ultrafeedback-10k.yaml")])
    assert (cfg.dataset_name, cfg.split, cfg.num_samples, cfg.seed) == (
        "HuggingFaceH4/ultrafeedback_binarized",
        "train_prefs",
        10_000,
        42,
    )
    assert (cfg.max_prompt_tokens, cfg.max_length) == (512, 2048)
    with pytest.raises(ValueError):
        UltraFeedbackConfig(num_samples=0)
    with pytest.raises(FileNotFoundError):
        sample_ultrafeedback(
            UltraFeedbackConfig(dataset_name=str(tmp_path / "missing.jsonl"), output_dir=str(tmp_path))
        )
