"""Scorer training: prompt -> score digit, loss on the digit token only, no EOS (as the original scorers)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from deita_train import sft
from deita_train.scorer_prompts import complexity_prompt, quality_prompt
from deita_train.templates import IGNORE_INDEX
from deita_train.tiny import make_tiny_checkpoint
from deita_train.training import RecordError, prepare_sft_data


ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "scorer.yaml"
SCORER_DATA = ROOT / "recipes" / "tiny" / "data" / "scorer.jsonl"
MISTRAL_DIGITS = {"1": 28740, "2": 28750, "3": 28770, "4": 28781, "5": 28782, "6": 28784}  # Mistral-7B-v0.1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "mistral")


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return sft.load_tokenizer(str(tiny), SimpleNamespace(model_revision="main"))


def argv(tiny: Path, out: Path, data: Path = SCORER_DATA, *extra: str) -> list[str]:
    return ["--config", str(RECIPE), "--model_name_or_path", str(tiny), "--dataset_name", str(data)] + [
        "--output_dir",
        str(out),
        *extra,
    ]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepare(tiny, tmp_path, data, *extra):
    script, args, _ = sft.parse_args(argv(tiny, tmp_path / "out", data, *extra))
    tok = sft.load_tokenizer(str(tiny), SimpleNamespace(model_revision="main"))
    return prepare_sft_data(script, tok, args)


def test_every_record_trains_exactly_its_digit_token(tiny, tmp_path, tokenizer):
    records = [json.loads(line) for line in SCORER_DATA.read_text().splitlines()]
    train, _, report, _ = prepare(tiny, tmp_path, SCORER_DATA)
    assert report.n_train == len(records) == 24 and report.n_supervised_tokens == 24
    assert {r["kind"] for r in records} == {"complexity", "quality"}
    for row, rec in zip(train, records, strict=True):
        ids, labels = row["input_ids"], row["labels"]
        supervised = [(i, x) for i, x in enumerate(labels) if x != IGNORE_INDEX]
        assert supervised == [(len(ids) - 1, MISTRAL_DIGITS[rec["completion"]])]  # one bare digit, the last token
        assert ids[:-1] == tokenizer(rec["prompt"])["input_ids"]  # BOS + the prompt's own tokens
        assert ids[0] == tokenizer.bos_token_id and ids[-2] == 28705  # the trailing space is the bare "▁"
        assert tokenizer.eos_token_id not in ids  # no EOS


def test_the_original_sharegpt_rows_give_the_same_tokens(tiny, tmp_path):
    rows = [json.loads(line) for line in SCORER_DATA.read_text().splitlines()[:4]]
    convs = [
        {
            "id": r["id"],
            "conversations": [{"from": "human", "value": r["prompt"]}, {"from": "gpt", "value": r["completion"]}],
        }
        for r in rows
    ]
    a, _, _, _ = prepare(tiny, tmp_path, write_jsonl(tmp_path / "a.jsonl", rows))
    b, _, _, _ = prepare(tiny, tmp_path, write_jsonl(tmp_path / "b.jsonl", convs))
    assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]


@pytest.mark.parametrize(
    "record, field, why",
    [
        ({"id": "r", "prompt": complexity_prompt("q"), "completion": "7"}, "completion", "digit 1-6"),
        ({"id": "r", "prompt": complexity_prompt("q"), "completion": " 3"}, "completion", "no spaces"),
        ({"id": "r", "prompt": complexity_prompt("q").rstrip(), "completion": "3"}, "prompt", "trailing space"),
        (
            {"id": "r", "prompt": quality_prompt("q", "a"), "completion": "3", "kind": "complexity"},
            "prompt",
            "end with",
        ),
        ({"id": "r", "prompt": complexity_prompt("q"), "completion": "3", "score": 4}, "score", "disagrees"),
        ({"id": "r", "text": "x"}, "prompt", "no 'prompt'"),
    ],
)
def test_bad_records_are_named(tiny, tmp_path, record, field, why):
    good = {"id": "ok", "prompt": complexity_prompt("fine"), "completion": "2"}
    data = write_jsonl(tmp_path / "d.jsonl", [good, record])
    with pytest.raises(RecordError, match=why) as info:
        prepare(tiny, tmp_path, data)
    assert (info.value.index, info.value.record_id, info.value.field) == (1, "r", field)
    assert f"record 1, id='r', field {field!r}" in str(info.value)


def test_lenient_mode_writes_rejects_and_counts_add_up(tiny, tmp_path):
    rows = [
        {"id": "a", "prompt": complexity_prompt("fine"), "completion": "2"},
        {"id": "b", "prompt": complexity_prompt("bad"), "completion": "9"},
        {"id": "c", "prompt": complexity_prompt(" ".join(["long"] * 300)), "completion": "5"},  # digit cut off
        {"id": "d", "prompt": quality_prompt("q", "a"), "completion": "6", "kind": "quality"},
    ]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    train, _, report, _ = prepare(tiny, tmp_path, data, "--strict_data", "false", "--max_length", "128")
    assert (report.n_in, report.n_rejected, report.n_dropped, report.n_train) == (4, 1, 1, 2)
    assert report.dropped_ids == ["c"]
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["id"], r["field"]) for r in rejects] == [("b", "completion")]


def test_tiny_scorer_trains_and_its_loss_goes_down(tiny, tmp_path):
    script, args, model_args = sft.parse_args(
        argv(
            tiny,
            tmp_path / "out",
            SCORER_DATA,
            *("--max_samples", "4", "--per_device_train_batch_size", "4", "--total_batch_size", "4"),
            *("--max_steps", "8", "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--warmup_steps", "0"),
            *("--save_strategy", "no"),
        )
    )
    trainer = sft.build_trainer(script, args, model_args)
    # what TRL trains on is still one digit token per record
    for labels in trainer.train_dataset["labels"]:
        assert len([x for x in labels if x != IGNORE_INDEX]) == 1
    trainer.train()
    curve = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(curve) == 8 and curve[-1] < 0.5 * curve[0]


def test_a_line_that_is_not_json_is_named_or_rejected(tiny, tmp_path):
    good = json.dumps({"id": "a", "prompt": complexity_prompt("fine"), "completion": "2"})
    data = tmp_path / "d.jsonl"
    data.write_text(good + "\n" + good.replace('"a"', '"b"')[:30] + "\n" + good.replace('"a"', '"c"') + "\n")
    with pytest.raises(RecordError, match=r"record 1 \(line 2\): truncated JSON line"):
        prepare(tiny, tmp_path, data)
    train, _, report, _ = prepare(tiny, tmp_path, data, "--strict_data", "false")
    assert (report.n_in, report.n_rejected, report.n_train) == (3, 1, 2)
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert [(r["index"], r["line"]) for r in rejects] == [(1, 2)]
