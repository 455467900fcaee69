"""SFT entry point on the tiny model (CPU): data preparation, masking, packing, resume, saved chat format."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from deita_train import sft
from deita_train.templates import IGNORE_INDEX, format_masked, render_conversation, tokenize_conversation
from deita_train.tiny import make_tiny_checkpoint
from deita_train.training import (
    DistributedLaunchError,
    apply_total_batch_size,
    check_distributed_launch,
    gradient_accumulation_for,
    prepare_sft_data,
    resolve_model_path,
    resolve_resume,
)


ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny" / "sft.yaml"
SFT_DATA = ROOT / "recipes" / "tiny" / "data" / "sft.jsonl"

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "mistral")


def argv(tiny: Path, out: Path, *extra: str, data: Path = SFT_DATA) -> list[str]:
    return [
        "--config",
        str(RECIPE),
        "--model_name_or_path",
        str(tiny),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(out),
        *extra,
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def losses(result_dir: Path) -> list[float]:
    state = json.loads((result_dir / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def test_chat_data_is_the_template_tokenization_and_every_record_is_counted(tiny, tmp_path, caplog):
    long_reply = " ".join(["word"] * 120)
    rows = [json.loads(line) for line in SFT_DATA.read_text().splitlines()[:3]]
    rows.append(  # truncated inside its reply: kept, its labelled head trained
        {
            "id": "long",
            "conversations": [{"from": "human", "value": "Say words."}, {"from": "gpt", "value": long_reply}],
        }
    )
    rows.append(  # the user turn alone fills max_length: nothing to learn, dropped and counted
        {
            "id": "masked",
            "conversations": [{"from": "human", "value": long_reply * 2}, {"from": "gpt", "value": "Ok."}],
        }
    )
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    script, args, _ = sft.parse_args(argv(tiny, tmp_path / "out", "--max_length", "96", data=data))
    tokenizer = sft.load_tokenizer(str(tiny), SimpleNamespace(model_revision="main"))
    with caplog.at_level(logging.INFO, logger="deita_train"):
        train, evals, report, encoded = prepare_sft_data(script, tokenizer, args)
    assert evals is None  # no silent hold-out
    assert (report.n_in, report.n_train, report.n_truncated, report.n_dropped) == (5, 4, 1, 1)
    assert report.dropped_ids == ["masked"]
    for row, rec in zip(train, [r for r in rows if r["id"] != "masked"], strict=True):
        expected = tokenize_conversation(rec["conversations"], tokenizer, 96)
        assert row["input_ids"] == expected["input_ids"]
        assert row["labels"] == expected["labels"]
    assert len(train[3]["input_ids"]) == 96
    # the start-up log shows one rendered sample with its supervised span, and the counts
    text = caplog.text
    assert "truncated to 96 tokens 1" in text and "fully masked and dropped 1" in text
    first = rows[0]["conversations"][1]["value"]
    assert f"ASSISTANT:[[ {first}</s>]]" in text


def test_masked_view_brackets_every_supervised_span(tiny):
    tokenizer = sft.load_tokenizer(str(tiny), SimpleNamespace(model_revision="main"))
    conv = [
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "Bye"},
        {"from": "gpt", "value": "Goodbye."},
    ]
    enc = tokenize_conversation(conv, tokenizer, None)
    view = format_masked(enc["input_ids"], enc["labels"], tokenizer)
    # decoded as trained: the legacy SentencePiece tokenizer reads "</s>USER" as "</s>", "▁USER"
    assert view.endswith("USER: Hi ASSISTANT:[[ Hello.</s>]] USER: Bye ASSISTANT:[[ Goodbye.</s>]]")
    assert view.count("[[") == view.count("]]") == 2


@pytest.fixture(scope="module")
def memorised(tiny, tmp_path_factory) -> Path:
    """Train on one conversation, repeated, until the model has learnt it (and learnt to stop)."""
    tmp = tmp_path_factory.mktemp("memorise")
    conv = [{"from": "human", "value": "Capital of France?"}, {"from": "gpt", "value": "Paris."}]
    data = write_jsonl(tmp / "one.jsonl", [{"id": "paris", "conversations": conv}])
    out = tmp / "out"
    result = sft.main(
        argv(
            tiny,
            out,
            *("--per_device_train_batch_size", "1", "--total_batch_size", "1", "--max_steps", "25"),
            *("--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--warmup_steps", "0"),
            *("--save_strategy", "no", "--logging_steps", "1"),
            data=data,
        )
    )
    assert result.output_dir == out and result.data.n_train == 1
    return out


def test_loss_goes_down_on_a_repeated_batch(memorised):
    curve = losses(memorised)
    assert len(curve) == 25
    assert curve[-1] < 0.5 * curve[0]


def test_saved_model_chats_in_the_training_format_and_stops_at_eos(memorised):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(memorised)
    model = AutoModelForCausalLM.from_pretrained(memorised)
    messages = [{"role": "user", "content": "Capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
    turns = [{"from": "human", "value": "Capital of France?"}]
    assert ids == tokenizer(render_conversation(turns, add_generation_prompt=True))["input_ids"]
    full = messages + [{"role": "assistant", "content": "Paris."}]
    enc = tokenizer.apply_chat_template(full, return_dict=True, return_assistant_tokens_mask=True)
    expected = tokenize_conversation(turns + [{"from": "gpt", "value": "Paris."}], tokenizer, None)
    assert enc["input_ids"] == expected["input_ids"]
    assert [i for i, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m] == [
        x for x in expected["labels"] if x != IGNORE_INDEX
    ]
    assert tokenizer.eos_token == "</s>" and model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    out = model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)[0, len(ids) :].tolist()
    assert out[-1] == tokenizer.eos_token_id and len(out) < 20  # it stopped by itself, at </s>
    assert tokenizer.decode(out, skip_special_tokens=True).strip() == "Paris."
    manifest = json.loads((memorised / "manifest.json").read_text())
    assert manifest["step"] == "sft" and manifest["counts"]["n_train"] == 1
    assert manifest["distributed"]["distributed_type"] == "NO"


def test_packed_sequences_do_not_attend_to_each_other(tiny, tmp_path):
    script, args, model_args = sft.parse_args(
        argv(tiny, tmp_path, "--packing", "true", "--per_device_train_batch_size", "1", "--total_batch_size", "1")
    )
    trainer = sft.build_trainer(script, args, model_args)
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch  # padding-free: the boundaries are in position_ids
    positions = batch["position_ids"][0]
    starts = (positions == 0).nonzero().flatten().tolist()
    assert len(starts) >= 3 and starts[0] == 0  # several conversations in one row, positions reset at each
    bounds = starts + [positions.numel()]
    model = trainer.model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}  # what the trainer feeds: ids, positions, cu_seq_lens
    with torch.no_grad():
        packed = model(**inputs, use_cache=False).logits[0]
        for a, b in zip(bounds, bounds[1:]):
            alone = model(input_ids=batch["input_ids"][:, a:b], use_cache=False).logits[0]
            torch.testing.assert_close(packed[a:b], alone, atol=1e-5, rtol=1e-5)
            assert batch["input_ids"][0, a].item() == trainer.processing_class.bos_token_id
            assert batch["labels"][0, a].item() == IGNORE_INDEX


class StopAt:
    """Simulates an interruption: training stops after `step` (the checkpoint of that step is written first)."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class _Stop(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= step:
                    control.should_training_stop = True

        return _Stop()


def test_resume_gives_the_weights_of_an_uninterrupted_run(tiny, tmp_path):
    common = (
        *("--per_device_train_batch_size", "2", "--total_batch_size", "4", "--max_steps", "4"),
        *("--save_strategy", "steps", "--save_steps", "2", "--max_samples", "12"),
    )
    straight = sft.main(argv(tiny, tmp_path / "straight", *common))
    assert straight.resumed_from is None
    interrupted = tmp_path / "interrupted"
    first = sft.run(*sft.parse_args(argv(tiny, interrupted, *common)), callbacks=[StopAt(2)])
    assert json.loads((interrupted / "trainer_state.json").read_text())["global_step"] == 2
    assert first.resumed_from is None
    second = sft.main(argv(tiny, interrupted, *common))  # auto-resume from the last checkpoint
    assert second.resumed_from is not None and second.resumed_from.endswith("checkpoint-2")
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(interrupted / "model.safetensors")
    base = load_file(tiny / "model.safetensors")
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], base[k]) for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)
    assert losses(tmp_path / "straight") == losses(interrupted)


def test_tiny_is_the_embedded_default(tmp_path, monkeypatch):
    monkeypatch.setenv("DEITA_TRAIN_CACHE", str(tmp_path))
    path = Path(resolve_model_path("tiny"))
    assert path == tmp_path / "tiny-mistral" and (path / "model.safetensors").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("tiny") == str(path) and (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert resolve_model_path("mistralai/Mistral-7B-v0.1") == "mistralai/Mistral-7B-v0.1"


def test_resume_choice(tmp_path):
    args = SimpleNamespace(output_dir=str(tmp_path), resume_from_checkpoint=None, auto_resume=True)
    assert resolve_resume(args) is None  # nothing to resume
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-12").mkdir()
    assert resolve_resume(args) == str(tmp_path / "checkpoint-12")  # the last one, not the last listed
    args.auto_resume = False
    assert resolve_resume(args) is None
    args.resume_from_checkpoint = "latest"
    assert resolve_resume(args) == str(tmp_path / "checkpoint-12")
    args.resume_from_checkpoint = str(tmp_path / "checkpoint-3")
    assert resolve_resume(args) == str(tmp_path / "checkpoint-3")
    args.resume_from_checkpoint = str(tmp_path / "checkpoint-99")
    with pytest.raises(FileNotFoundError):
        resolve_resume(args)


def test_total_batch_size_is_kept_whatever_the_world_size():
    for world in (1, 2, 8):
        for per_device in (1, 2, 4):
            steps = gradient_accumulation_for(512, per_device, world)
            assert steps * per_device * world == 512
    with pytest.raises(ValueError, match="not a multiple"):
        gradient_accumulation_for(512, 3, 2)
    with pytest.raises(ValueError, match=r"6 processes cannot share 512 samples evenly.*\[1, 2, 4, 8, 16, 32, 64\]"):
        gradient_accumulation_for(512, 2, 6)
    with pytest.raises(
        ValueError, match=r"per_device_train_batch_size must divide 64: one of \[1, 2, 4, 8, 16, 32, 64\]"
    ):
        gradient_accumulation_for(512, 3, 8)
    args = SimpleNamespace(
        total_batch_size=512, per_device_train_batch_size=2, world_size=8, gradient_accumulation_steps=1
    )
    apply_total_batch_size(args)
    assert args.gradient_accumulation_steps == 32
    args.world_size, args.gradient_accumulation_steps = 2, 4
    with pytest.raises(ValueError, match="conflicts"):
        apply_total_batch_size(args)


def test_multi_process_launch_that_became_independent_runs_is_refused(tiny, tmp_path, monkeypatch):
    check_distributed_launch(SimpleNamespace(world_size=2, use_cpu=True), {"WORLD_SIZE": "2"})
    check_distributed_launch(SimpleNamespace(world_size=1, use_cpu=False), {})
    with pytest.raises(DistributedLaunchError, match="use_cpu: true"):
        check_distributed_launch(SimpleNamespace(world_size=1, use_cpu=False), {"WORLD_SIZE": "2"})
    # one process of a launch that asked for 2 but runs alone (the real 2-process case is in test_distributed.py)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    parsed = sft.parse_args(argv(tiny, tmp_path, "--use_cpu", "false"))
    with pytest.raises(DistributedLaunchError, match="2 independent runs"):
        sft.build_trainer(*parsed)


def test_recipe_keys_are_checked(tiny, tmp_path):
    with pytest.raises(ValueError):
        sft.parse_args(argv(tiny, tmp_path, "--max_seq_length", "2048"))
    bad = tmp_path / "bad.yaml"
    bad.write_text(RECIPE.read_text() + "\nmax_seq_length: 2048\n")
    with pytest.raises(ValueError, match="max_seq_length"):
        sft.parse_args(["--config", str(bad)])
    with pytest.raises(SystemExit):  # argparse choices on the command line
        sft.parse_args(argv(tiny, tmp_path, "--task", "poetry"))
    bad.write_text(RECIPE.read_text().replace("task: chat", "task: poetry"))
    with pytest.raises(ValueError, match="task must be one of"):  # and in the recipe
        sft.parse_args(["--config", str(bad)])


def test_eval_split_only_when_asked(tiny, tmp_path):
    script, args, _ = sft.parse_args(argv(tiny, tmp_path, "--eval_fraction", "0.25"))
    tokenizer = sft.load_tokenizer(str(tiny), SimpleNamespace(model_revision="main"))
    train, evals, report, _ = prepare_sft_data(script, tokenizer, args)
    assert (len(train), len(evals)) == (18, 6) == (report.n_train, report.n_eval)
    assert report.n_in == 24


@pytest.mark.slow
def test_python_m_run_with_tensorboard_and_wandb_offline(tiny, tmp_path):
    out = tmp_path / "out"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(tmp_path),
        "WANDB_SILENT": "true",
    }
    recipe = tmp_path / "tracked.yaml"  # a list value comes from YAML (the command line takes one string)
    recipe.write_text(RECIPE.read_text().replace("report_to: none", "report_to: [tensorboard, wandb]"))
    args = argv(tiny, out, "--max_steps", "1", "--save_strategy", "no", "--hub_token", "hf_SECRETSECRET")
    args[1] = str(recipe)
    cmd = [sys.executable, "-m", "deita_train.sft", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ASSISTANT:[[" in proc.stderr and "fully masked and dropped 0" in proc.stderr
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no tensorboard events"
    assert list((tmp_path / "wandb").glob("offline-run-*")), "no offline wandb run"
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".txt", ".md", ".yaml"):
            assert "hf_SECRETSECRET" not in path.read_text(errors="ignore"), path
    assert "hf_SECRETSECRET" not in proc.stderr + proc.stdout
