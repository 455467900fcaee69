"""Stage caching, manifests and the GPU-hour estimate: the plumbing every step relies on."""

import json

from deita_train.compute import deita_stages, format_table
from deita_train.manifest import redact, write_manifest
from deita_train.stages import Stage, StageRunner


def test_stage_reused_only_when_inputs_config_and_outputs_unchanged(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a")
    calls = []

    def work(d):
        calls.append(1)
        (d / "out.txt").write_text(src.read_text())
        return {"n": len(calls)}

    def stage(cfg):
        return Stage("s", work, config=cfg, inputs=[src], outputs=["out.txt"])

    run = StageRunner(tmp_path / "runs")
    assert run.run(stage({"k": 1})) == {"n": 1}
    assert run.run(stage({"k": 1})) == {"n": 1} and len(calls) == 1, "unchanged: reused"
    assert run.run(stage({"k": 2}))["n"] == 2, "config changed: redone"
    src.write_text("b")
    assert run.run(stage({"k": 2}))["n"] == 3, "input content changed: redone"
    (tmp_path / "runs" / "s" / "out.txt").unlink()
    assert run.run(stage({"k": 2}))["n"] == 4, "output missing: redone"
    assert StageRunner(tmp_path / "runs", force=True).run(stage({"k": 2}))["n"] == 5
    rec = json.loads((tmp_path / "runs" / "s" / "stage.json").read_text())
    assert rec["summary"] == {"n": 5} and rec["seconds"] >= 0


def test_manifest_redacts_secrets_and_hashes_inputs(tmp_path):
    inp = tmp_path / "x.jsonl"
    inp.write_text("{}\n")
    cfg = {
        "model": "m",
        "api_key": "sk-SECRET",
        "hub_token": "hf_SECRET",
        "nested": {"password": "p"},
        "max_tokens": 5,
    }
    m = write_manifest(tmp_path / "manifest.json", step="t", config=cfg, inputs=[inp], counts={"in": 1})
    text = (tmp_path / "manifest.json").read_text()
    assert "SECRET" not in text and '"p"' not in text
    assert m["config"]["max_tokens"] == 5 and m["config"]["api_key"] == "<redacted>"
    assert m["inputs"][0]["sha256"] and m["versions"]["transformers"]
    assert redact({"api_key_env": "OPENAI_API_KEY"}) == {"api_key_env": "OPENAI_API_KEY"}, (
        "the variable's name is no secret"
    )


def test_gpu_hours_follow_the_flop_count():
    stages = {s.stage: s for s in deita_stages()}
    sft = stages["SFT deita-6k"]
    assert sft.flops == 8 * 7.24e9 * 6000 * 1800 * 6, "fwd + bwd + the checkpointing recompute"
    assert abs(sft.gpu_hours(1000, 0.5) - sft.flops / 5e14 / 3600) < 1e-9
    assert "| **total** |" in format_table(list(stages.values()), 0.4)


def test_readme_gpu_hours_are_the_commands_output():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert format_table(deita_stages(), 0.4) in readme, (
        "README's GPU-hours table is stale: paste `python -m deita_train.compute`"
    )
