"""The end-to-end run for real: one recipe listing every step's command, run in order, cached per stage.

    python -m deita_train.pipeline --config recipes/pipeline/deita-7b-v1.0.yaml --dry_run true
    python -m deita_train.pipeline --config recipes/pipeline/deita-7b-v1.0.yaml [--only sft,dpo] [--force true]

This is `make demo`'s documented equivalent at full size. Each stage is a shell command (a data
step, or an `accelerate launch` of a training entry point) with the recipe files and input files
it depends on and the outputs it must leave. A stage is skipped when its command, its recipes'
contents and its inputs' contents are unchanged and its outputs exist (`deita_train.stages`), so a
rerun after a failure or an edit redoes only what is stale. Within a stage, the steps' own resume
(sharded chunks, checkpoints, request caches) picks up where a killed run stopped.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deita_train.config import parse_config, setup_logging
from deita_train.stages import Stage, StageRunner


logger = logging.getLogger("deita_train.pipeline")


@dataclass
class PipelineConfig:
    run_dir: str = field(default="runs/pipeline", metadata={"help": "Where the per-stage records are kept."})
    variables: dict[str, str] = field(
        default_factory=dict, metadata={"help": "Names substituted as {name} into every stage's command."}
    )
    stages: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={"help": "Each: name, command, recipes (list), inputs (list), outputs (list)."},
    )
    only: str | None = field(default=None, metadata={"help": "Comma-separated stage names to run (others skipped)."})
    dry_run: bool = field(default=False, metadata={"help": "Print each stage's command and whether it is stale."})
    force: bool = field(default=False, metadata={"help": "Redo stages even when nothing changed."})


STAGE_KEYS = {"name", "command", "recipes", "inputs", "outputs"}


def _command_stage(spec: dict[str, Any], variables: dict[str, str], index: int) -> Stage:
    unknown = set(spec) - STAGE_KEYS
    if unknown or "name" not in spec or "command" not in spec:
        raise ValueError(
            f"stage {index}: needs name and command; unknown keys {sorted(unknown)} (allowed {sorted(STAGE_KEYS)})"
        )
    try:
        command = " ".join(str(spec["command"]).split()).format(**variables)
    except KeyError as e:
        raise ValueError(f"stage {spec['name']!r}: command uses {{{e.args[0]}}}, not in variables") from e
    outputs = [str(Path(o).resolve()) for o in spec.get("outputs", [])]

    def run(stage_dir: Path) -> dict[str, Any]:
        logger.info("$ %s", command)
        (stage_dir / "command.sh").write_text(command + "\n")
        subprocess.run(shlex.split(command), check=True)
        missing = [o for o in outputs if not Path(o).exists()]
        if missing:
            raise RuntimeError(f"stage {spec['name']!r} finished but did not write {missing}")
        return {"command": command, "outputs": outputs}

    deps = [Path(p) for p in [*spec.get("recipes", []), *spec.get("inputs", [])]]
    return Stage(spec["name"], run, config={"command": command}, inputs=deps, outputs=outputs)


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    stages = [_command_stage(s, cfg.variables, i) for i, s in enumerate(cfg.stages)]
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique: {names}")
    if cfg.only:
        wanted = [n.strip() for n in cfg.only.split(",")]
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise ValueError(f"--only names unknown stages {unknown}; stages are {names}")
        stages = [s for s in stages if s.name in wanted]
    return stages


def main(args: list[str] | None = None) -> list[dict[str, Any]]:
    setup_logging()
    (cfg,) = parse_config(PipelineConfig, args=args)
    runner = StageRunner(cfg.run_dir, force=cfg.force)
    stages = build_stages(cfg)
    if cfg.dry_run:
        for i, stage in enumerate(stages, start=1):
            state = "up to date" if runner.is_current(stage) else "would run"
            print(f"[{i}/{len(stages)}] {stage.name} ({state})\n    {stage.config['command']}")
        return []
    return runner.run_all(stages)


if __name__ == "__main__":
    main()
