"""Every training recipe parses with its entry point's parser and says what the original ran; launch configs load."""

from __future__ import annotations

import os
from pathlib import Path
from unittest.mock import patch

import pytest

from deita_train import dpo, sft
from deita_train.training import gradient_accumulation_for


ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
TRAINING_RECIPES = sorted(
    p.relative_to(RECIPES).as_posix()
    for folder in ("mistral-7b", "scorers", "tiny")
    for p in (RECIPES / folder).rglob("*.yaml")
)
REAL_SFT = ["mistral-7b/sft/deita-6k.yaml", "mistral-7b/sft/deita-10k.yaml"]
SCORERS = [f"scorers/{k}-{m}.yaml" for k in ("complexity", "quality") for m in ("llama-13b", "mistral-7b")]
DPO = "mistral-7b/dpo/deita-6k-ultrafeedback-10k.yaml"


def is_dpo(name: str) -> bool:
    return "/dpo/" in name or name.endswith("tiny/dpo.yaml")


@pytest.fixture(scope="module")
def parsed():
    """Parse each recipe once, as on a GPU machine (bf16 is refused on a CPU-only box at parse time)."""
    cache = {}

    def get(name: str):
        if name not in cache:
            entry = dpo if is_dpo(name) else sft
            with patch("transformers.training_args.is_torch_bf16_gpu_available", return_value=True):
                cache[name] = entry.parse_args(["--config", str(RECIPES / name)])
        return cache[name]

    return get


def test_the_expected_recipes_exist():
    expected = set(REAL_SFT + SCORERS + [DPO]) | {
        "mistral-7b/sft/deita-6k-qlora.yaml",
        "mistral-7b/dpo/deita-6k-ultrafeedback-10k-lora.yaml",
        "tiny/sft.yaml",
        "tiny/scorer.yaml",
        "tiny/dpo.yaml",
    }
    assert expected <= set(TRAINING_RECIPES)


@pytest.mark.parametrize("name", TRAINING_RECIPES)
def test_recipe_parses_and_keeps_its_effective_batch_on_any_gpu_count(parsed, name):
    script, args, model = parsed(name)
    assert script.dataset_name and model.model_name_or_path
    assert args.total_batch_size is not None
    worlds = (1, 2) if name.startswith("tiny/") else (1, 2, 8)  # tiny: one or two CPU processes
    for world in worlds:
        steps = gradient_accumulation_for(args.total_batch_size, args.per_device_train_batch_size, world)
        assert steps * args.per_device_train_batch_size * world == args.total_batch_size
    assert args.auto_resume and args.save_strategy != "no"


@pytest.mark.parametrize("name", REAL_SFT)
def test_sft_recipes_have_the_model_card_hyperparameters(parsed, name):
    script, args, model = parsed(name)
    assert model.model_name_or_path == "mistralai/Mistral-7B-v0.1"
    assert script.dataset_name == f"hkust-nlp/deita-{name.split('-')[-1].removesuffix('.yaml')}-v0"
    assert (script.task, script.eval_fraction, args.packing) == ("chat", 0.0, False)
    assert (args.learning_rate, args.num_train_epochs, args.total_batch_size) == (2e-5, 6, 512)
    assert (args.lr_scheduler_type.value, args.warmup_steps) == ("cosine", 0.1)
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.weight_decay) == (0.9, 0.999, 1e-8, 0.0)
    assert (args.max_length, args.bf16, args.seed) == (2048, True, 42)
    assert args.report_to == ["wandb"]


@pytest.mark.parametrize("name", SCORERS)
def test_scorer_recipes_have_the_original_settings(parsed, name):
    script, args, model = parsed(name)
    kind = name.split("/")[1].split("-")[0]
    assert script.task == "scorer" and script.dataset_name.endswith(f"{kind}_train.jsonl")
    base = "huggyllama/llama-13b" if "llama" in name else "mistralai/Mistral-7B-v0.1"
    assert model.model_name_or_path == base
    assert (args.learning_rate, args.num_train_epochs, args.total_batch_size) == (2e-5, 6, 512)
    assert (args.lr_scheduler_type.value, args.warmup_steps, args.max_length, args.bf16) == ("cosine", 0.1, 2048, True)


def test_dpo_recipe_has_the_original_settings(parsed):
    script, args, model = parsed(DPO)
    assert model.model_name_or_path == "runs/mistral-7b/sft/deita-6k"  # the SFT output: policy start and reference
    assert script.ref_model_name_or_path is None and not model.use_peft
    assert (args.beta, args.loss_type, args.learning_rate, args.num_train_epochs) == (0.1, ["sigmoid"], 5e-7, 9)
    assert (args.total_batch_size, args.lr_scheduler_type.value, args.warmup_steps) == (32, "linear", 0.1)
    assert (args.max_length, args.bf16, args.gradient_checkpointing, args.seed) == (2048, True, True, 42)


def test_peft_variants(parsed):
    _, _, model = parsed("mistral-7b/sft/deita-6k-qlora.yaml")
    assert model.use_peft and model.load_in_4bit and model.bnb_4bit_quant_type == "nf4"
    _, _, model = parsed("mistral-7b/dpo/deita-6k-ultrafeedback-10k-lora.yaml")
    assert model.use_peft and not model.load_in_4bit


@pytest.mark.parametrize("name", ["tiny/sft.yaml", "tiny/scorer.yaml", "tiny/dpo.yaml"])
def test_tiny_recipes_run_on_cpu_with_the_embedded_default(parsed, name):
    script, args, model = parsed(name)
    assert model.model_name_or_path == "tiny" and (args.use_cpu, args.bf16) == (True, False)
    assert args.report_to == []
    assert (ROOT / script.dataset_name).is_file()


def launch_env(config: str) -> dict[str, str]:
    """The environment `accelerate launch --config_file <config>` gives the training processes."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(ROOT / "accelerate_configs" / config), "x.py"])
    args, _, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ""
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


@pytest.mark.parametrize(
    "config, processes, stage",
    [("ddp.yaml", 8, None), ("zero2.yaml", 8, 2), ("zero3.yaml", 8, 3)]
    + [("cpu_2proc.yaml", 2, None), ("zero2_cpu.yaml", 2, 2), ("zero3_cpu.yaml", 2, 3)],
)
def test_launch_configs(config, processes, stage):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    cfg = load_config_from_file(str(ROOT / "accelerate_configs" / config))
    cpu = "cpu" in config
    assert (cfg.num_processes, cfg.use_cpu, cfg.mixed_precision) == (processes, cpu, "no" if cpu else "bf16")
    env = launch_env(config)
    if stage is None:
        assert cfg.distributed_type.value == "MULTI_GPU"
        return
    assert cfg.distributed_type.value == "DEEPSPEED"
    assert "gradient_accumulation_steps" not in cfg.deepspeed_config  # the recipe's total_batch_size decides
    with patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == stage
    if stage == 3:
        assert (
            plugin.zero3_init_flag
            and plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
        )


def test_fsdp_config_loads_as_the_launcher_reads_it():
    from accelerate.utils import FullyShardedDataParallelPlugin

    env = launch_env("fsdp.yaml")
    assert env["ACCELERATE_USE_FSDP"] == "true"
    with patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.state_dict_type.name == "FULL_STATE_DICT"
    assert plugin.cpu_ram_efficient_loading and plugin.reshard_after_forward


@pytest.mark.parametrize("folder", ["", "mistral-7b", "mistral-7b/sft", "mistral-7b/dpo", "scorers", "tiny"])
def test_each_recipe_folder_has_a_readme_with_commands_and_cost(folder):
    text = (RECIPES / folder / "README.md").read_text()
    assert "deita_train." in text
    if folder.startswith("mistral-7b/") or folder == "scorers":
        assert "GPU-hours" in text and "accelerate launch" in text
        for recipe in (RECIPES / folder).glob("*.yaml"):
            assert recipe.name in text, f"{folder}/README.md does not mention {recipe.name}"
