"""Real two-process runs on CPU (gloo): DDP, DeepSpeed ZeRO-2 and ZeRO-3 for SFT, ZeRO-3 for DPO.

Each run is `accelerate launch --config_file accelerate_configs/<cfg>.yaml -m deita_train.<sft|dpo>`
with the tiny recipe; every rank writes a checksum of its full parameters at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from deita_train.tiny import make_tiny_checkpoint
from deita_train.training import parameter_checksum, skip_deepspeed_cpu_shm_kernel


pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
CONFIGS = {"ddp": "cpu_2proc.yaml", "zero2": "zero2_cpu.yaml", "zero3": "zero3_cpu.yaml"}
SHORT = ("--max_steps", "2", "--max_samples", "8", "--per_device_train_batch_size", "2", "--total_batch_size", "8")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "mistral")


def launch(config: str, module: str, recipe: str, tiny: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(ACCELERATE), "launch", "--config_file", str(ROOT / "accelerate_configs" / config), "-m", module]
    cmd += ["--config", str(ROOT / "recipes" / "tiny" / recipe), "--model_name_or_path", str(tiny)]
    cmd += ["--dataset_name", str(ROOT / "recipes" / "tiny" / "data" / recipe.replace(".yaml", ".jsonl"))]
    cmd += ["--output_dir", str(out), "--save_strategy", "no", "--param_checksums", "true", *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def sft_run(tiny, tmp_path_factory):
    """Run (once) the tiny SFT recipe under a launcher config; returns its output dir."""
    done: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in done:
            out = tmp_path_factory.mktemp(name) / "out"
            proc = launch(CONFIGS[name], "deita_train.sft", "sft.yaml", tiny, out, *SHORT)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
            done[name] = out
        return done[name]

    return get


def rank_checksums(out: Path) -> list[dict]:
    files = sorted((out / "param_checksums").glob("rank*.json"))
    return [json.loads(f.read_text()) for f in files]


def assert_ranks_in_sync(out: Path) -> dict:
    ranks = rank_checksums(out)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 2
    assert ranks[0]["sha256"] == ranks[1]["sha256"]
    return ranks[0]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_ddp_two_ranks_end_with_identical_parameters(sft_run):
    out = sft_run("ddp")
    assert_ranks_in_sync(out)
    dist = manifest(out)["distributed"]
    assert (dist["distributed_type"], dist["num_processes"], dist["effective_batch_size"]) == ("MULTI_CPU", 2, 8)
    assert dist["gradient_accumulation_steps"] == 2  # 8 = 2 per device x 2 processes x 2


def test_zero2_two_ranks_end_with_identical_parameters(sft_run):
    out = sft_run("zero2")
    assert_ranks_in_sync(out)
    dist = manifest(out)["distributed"]
    assert (dist["distributed_type"], dist["zero_stage"], dist["num_processes"]) == ("DEEPSPEED", 2, 2)


def test_zero3_saves_a_loadable_full_checkpoint(sft_run):
    from transformers import AutoModelForCausalLM

    out = sft_run("zero3")
    gathered = assert_ranks_in_sync(out)
    assert manifest(out)["distributed"]["zero_stage"] == 3
    model = AutoModelForCausalLM.from_pretrained(out)  # the full model, not shards
    assert parameter_checksum(model)["sha256"] == gathered["sha256"]


def test_ddp_zero2_and_zero3_train_the_same_model(sft_run, tiny):
    weights = {name: load_file(sft_run(name) / "model.safetensors") for name in CONFIGS}
    start = load_file(tiny / "model.safetensors")
    assert any(not torch.equal(weights["ddp"][k], start[k]) for k in start)
    for name in ("zero2", "zero3"):
        assert weights[name].keys() == weights["ddp"].keys()
        for k in weights["ddp"]:
            torch.testing.assert_close(weights[name][k], weights["ddp"][k], atol=1e-5, rtol=1e-4)


def test_zero3_dpo_two_processes(tiny, tmp_path):
    out = tmp_path / "dpo"
    proc = launch("zero3_cpu.yaml", "deita_train.dpo", "dpo.yaml", tiny, out, *SHORT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert_ranks_in_sync(out)
    m = manifest(out)
    assert (m["step"], m["distributed"]["zero_stage"], m["distributed"]["num_processes"]) == ("dpo", 3, 2)
    assert (out / "model.safetensors").is_file()


@pytest.mark.parametrize("env, skipped", [({}, False), ({"ACCELERATE_USE_DEEPSPEED": "true"}, True)])
def test_deepspeed_cpu_runs_skip_the_shared_memory_kernel_build(env, skipped):
    import deepspeed.ops

    assert skip_deepspeed_cpu_shm_kernel(env) is skipped
    if skipped:
        assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False
    assert skip_deepspeed_cpu_shm_kernel({**env, "DEITA_DS_SHM_COMM": "1"}) is False


def test_two_processes_without_use_cpu_stop_with_a_clear_error(tiny, tmp_path):
    proc = launch("cpu_2proc.yaml", "deita_train.sft", "sft.yaml", tiny, tmp_path / "out", "--use_cpu", "false")
    assert proc.returncode != 0
    assert "2 independent runs" in proc.stderr and "use_cpu: true" in proc.stderr


def test_two_ranks_train_what_one_process_trains_with_the_same_effective_batch(sft_run, tiny, tmp_path):
    """Each optimizer step covers the same 8 samples, split over 2 ranks or accumulated on 1: the same model.

    This checks the data really is sharded and the gradients really are averaged across ranks: had
    both ranks read the same samples, each step would cover only 4 distinct ones and the weights
    would differ. (Two independent runs are caught elsewhere: the launch guard and num_processes.)
    """
    out = tmp_path / "one"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "deita_train.sft", "--config", str(ROOT / "recipes" / "tiny" / "sft.yaml")]
    cmd += ["--model_name_or_path", str(tiny), "--output_dir", str(out), "--save_strategy", "no"]
    cmd += ["--dataset_name", str(ROOT / "recipes" / "tiny" / "data" / "sft.jsonl"), *SHORT]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert manifest(out)["distributed"]["gradient_accumulation_steps"] == 4
    assert manifest(sft_run("ddp"))["distributed"]["gradient_accumulation_steps"] == 2
    one, two = load_file(out / "model.safetensors"), load_file(sft_run("ddp") / "model.safetensors")
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-4)
