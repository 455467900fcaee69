"""DPO entry point on the tiny model (CPU): pairs in the SFT format, token identity with SFT, learning."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from datasets import Dataset

from deita_train import dpo, sft
from deita_train.templates import IGNORE_INDEX, render_conversation, tokenize_conversation
from deita_train.tiny import make_tiny_checkpoint
from deita_train.training import RecordError, normalize_preference_record, preference_pair


ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "dpo.yaml"
DPO_DATA = ROOT / "recipes" / "tiny" / "data" / "dpo.jsonl"

CONVERSATIONS = [
    [{"from": "human", "value": "What is 2 plus 2?"}, {"from": "gpt", "value": "2 plus 2 is four."}],
    [
        {"from": "system", "value": "Answer in French."},
        {"from": "human", "value": "Hello!"},
        {"from": "gpt", "value": "Bonjour !"},
        {"from": "human", "value": "Thank you.\nBye"},
        {"from": "gpt", "value": "Merci, au revoir.\n\n- fin"},
    ],
    [{"from": "human", "value": "List two colours"}, {"from": "gpt", "value": "1. red\n2. blue"}],
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "mistral")


def argv(tiny: Path, out: Path, data: Path = DPO_DATA, *extra: str) -> list[str]:
    return ["--config", str(RECIPE), "--model_name_or_path", str(tiny), "--dataset_name", str(data)] + [
        "--output_dir",
        str(out),
        *extra,
    ]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dpo_prompt_is_the_sft_prompt_up_to_the_reply():
    for conv in CONVERSATIONS:
        pair = preference_pair(conv[:-1], conv[-1]["value"], "Something else.")
        assert pair["prompt"] + pair["chosen"] == render_conversation(conv)
        assert pair["prompt"].endswith("ASSISTANT:") and pair["chosen"].endswith("</s>")


def test_dpo_trains_on_the_sft_tokens_with_loss_on_reply_and_eos_only(tiny, tmp_path):
    rows = []
    for i, conv in enumerate(CONVERSATIONS):
        rows.append({"id": f"c{i}", **preference_pair(conv[:-1], conv[-1]["value"], "No.")})
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    trainer = dpo.build_trainer(*dpo.parse_args(argv(tiny, tmp_path / "out", data)))
    tokenizer = trainer.processing_class
    for row, conv in zip(trainer.train_dataset, CONVERSATIONS, strict=True):
        expected = tokenize_conversation(conv, tokenizer, None)
        n_prompt = len(row["prompt_ids"])
        # the exact ids SFT trains on (one BOS, same tokens), and DPO's loss covers exactly the last reply + </s>
        assert row["prompt_ids"] + row["chosen_ids"] == expected["input_ids"]
        assert row["prompt_ids"].count(tokenizer.bos_token_id) == 1
        assert expected["labels"][n_prompt:] == row["chosen_ids"]
        assert expected["labels"][n_prompt - 1] == IGNORE_INDEX
        assert row["chosen_ids"][-1] == tokenizer.eos_token_id == row["rejected_ids"][-1]
        last = [{"from": "gpt", "value": "No."}]
        assert (
            row["prompt_ids"] + row["rejected_ids"]
            == tokenize_conversation(conv[:-1] + last, tokenizer, None)["input_ids"]
        )


def test_conversational_pairs_are_rendered_in_the_sft_format():
    conv = CONVERSATIONS[1]
    to_msgs = {"system": "system", "human": "user", "gpt": "assistant"}
    msgs = [{"role": to_msgs[t["from"]], "content": t["value"]} for t in conv]
    ultrafeedback_style = {
        "prompt": "Thank you.\nBye",  # UltraFeedback's raw prompt string: the conversation history wins
        "chosen": msgs,
        "rejected": msgs[:-1] + [{"role": "assistant", "content": "No."}],
    }
    pair = normalize_preference_record(ultrafeedback_style, "mem", 0)
    assert pair == preference_pair(conv[:-1], conv[-1]["value"], "No.")


@pytest.mark.parametrize(
    "change, field, why",
    [
        ({"chosen": "Paris.</s>"}, "chosen", "' ' \\+ reply"),
        ({"chosen": " Paris."}, "chosen", "' ' \\+ reply"),
        ({"prompt": "user: Capital? assistant:"}, "prompt", "ASSISTANT:"),
        ({"rejected": " Paris.</s>"}, "rejected", "identical"),
        ({"rejected": None}, "rejected", "reply"),
    ],
)
def test_bad_pairs_are_named(change, field, why):
    record = {"id": "p1", **preference_pair([{"from": "human", "value": "Capital?"}], "Paris.", "Rome.")}
    record.update(change)
    with pytest.raises(RecordError, match=why) as info:
        normalize_preference_record(record, "pairs.jsonl", 3)
    assert (info.value.record_id, info.value.field, info.value.index) == ("p1", field, 3)


def raw_pairs(n: int) -> Dataset:
    rows = [json.loads(line) for line in DPO_DATA.read_text().splitlines()[:n]]
    return Dataset.from_dict({k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected")})


def test_tiny_dpo_preference_accuracy_on_its_training_pairs_rises_above_chance(tiny, tmp_path):
    out = tmp_path / "out"
    trainer = dpo.build_trainer(
        *dpo.parse_args(
            argv(
                tiny,
                out,
                DPO_DATA,
                *("--max_samples", "8", "--per_device_train_batch_size", "4", "--total_batch_size", "8"),
                *("--max_steps", "3", "--learning_rate", "3e-3", "--save_strategy", "no"),
            )
        )
    )
    before = trainer.evaluate(raw_pairs(8))
    assert before["eval_rewards/accuracies"] == 0.0  # policy == reference: every margin is 0
    trainer.train()
    after = trainer.evaluate(raw_pairs(8))
    assert after["eval_rewards/accuracies"] > 0.5
    assert after["eval_rewards/margins"] > 0 and after["eval_loss"] < before["eval_loss"]


def test_precomputed_reference_and_lora_options_run(tiny, tmp_path):
    short = ("--max_samples", "4", "--per_device_train_batch_size", "2", "--total_batch_size", "2")
    short += ("--max_steps", "1", "--save_strategy", "no")
    pre = dpo.main(argv(tiny, tmp_path / "pre", DPO_DATA, *short, "--precompute_ref_log_probs", "true"))
    assert pre.metrics["train_loss"] > 0
    lora_args = (
        "--use_peft",
        "true",
        "--lora_r",
        "4",
        "--lora_alpha",
        "8",
        "--lora_target_modules",
        "q_proj",
        "v_proj",
    )
    lora = dpo.main(argv(tiny, tmp_path / "lora", DPO_DATA, *short, *lora_args))
    assert (lora.output_dir / "adapter_config.json").is_file()
    assert json.loads((lora.output_dir / "manifest.json").read_text())["step"] == "dpo"


def test_explicit_reference_model(tiny, tmp_path):
    other = make_tiny_checkpoint(tmp_path / "ref", seed=1)
    trainer = dpo.build_trainer(
        *dpo.parse_args(
            argv(tiny, tmp_path / "out", DPO_DATA, "--max_samples", "2", "--ref_model_name_or_path", str(other))
        )
    )
    ref = trainer.accelerator.unwrap_model(trainer.ref_model)
    policy = trainer.accelerator.unwrap_model(trainer.model)
    assert ref.config._name_or_path == str(other) and policy.config._name_or_path == str(tiny)
    assert not any(p.requires_grad for p in ref.parameters())


def test_sft_and_dpo_tokenizers_agree(tiny):
    a = sft.load_tokenizer(str(tiny), SimpleNamespace(model_revision="main"))
    b = dpo.load_tokenizer(str(tiny), SimpleNamespace(model_revision="main"))
    assert a.chat_template == b.chat_template and a.padding_side == b.padding_side == "right"
