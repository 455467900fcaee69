"""The end-to-end recipe for real runs: it parses, chains existing recipes, and the runner caches stages."""

import sys
from pathlib import Path

import pytest
import yaml

from deita_train.pipeline import PipelineConfig, build_stages, main


REPO = Path(__file__).resolve().parents[1]


def test_real_pipeline_recipe_parses_and_names_existing_recipes(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    main(["--config", "recipes/pipeline/deita-7b-v1.0.yaml", "--dry_run", "true", "--run_dir", "/nonexistent/x"])
    out = capsys.readouterr().out
    assert "[1/18] seeds (would run)" in out and "[2/18] pool (would run)" in out and "-m deita_train.dpo" in out
    cfg = PipelineConfig(**yaml.safe_load((REPO / "recipes/pipeline/deita-7b-v1.0.yaml").read_text()))
    for spec in cfg.stages:
        for r in spec.get("recipes", []):
            assert (REPO / r).is_file(), f"stage {spec['name']} names a missing recipe {r}"
    assert [s.name for s in build_stages(cfg)][-2:] == ["publish", "report"]


def test_runner_runs_commands_in_order_and_skips_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text("x: 1\n")
    py = sys.executable
    recipe = tmp_path / "p.yaml"
    recipe.write_text(
        f"""run_dir: {tmp_path}/rec
variables: {{py: {py}}}
stages:
  - name: a
    command: "{{py}} -c \\"open('a.txt','a').write('a')\\""
    recipes: [r.yaml]
    outputs: [a.txt]
  - name: b
    command: "{{py}} -c \\"open('b.txt','a').write(open('a.txt').read())\\""
    inputs: [a.txt]
    outputs: [b.txt]
"""
    )
    main(["--config", str(recipe)])
    assert (tmp_path / "b.txt").read_text() == "a"
    main(["--config", str(recipe)])
    assert (tmp_path / "a.txt").read_text() == "a", "unchanged stages are not redone"
    (tmp_path / "r.yaml").write_text("x: 2\n")
    main(["--config", str(recipe)])
    assert (tmp_path / "a.txt").read_text() == "aa" and (tmp_path / "b.txt").read_text() == "aaa", (
        "an edited recipe redoes its stage and, through the changed input, the next one"
    )


def test_bad_stage_specs_are_refused():
    with pytest.raises(ValueError, match="unknown keys"):
        build_stages(PipelineConfig(stages=[{"name": "a", "command": "true", "output": ["x"]}]))
    with pytest.raises(ValueError, match="not in variables"):
        build_stages(PipelineConfig(stages=[{"name": "a", "command": "{launcher} x"}]))
    with pytest.raises(ValueError, match="unknown stages"):
        build_stages(PipelineConfig(stages=[{"name": "a", "command": "true"}], only="b"))
