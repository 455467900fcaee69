"""AlpacaEval for a checkpoint: `gen` writes model_outputs.json, `judge` runs alpaca_eval against a judge endpoint.

    python eval/alpaca_eval.py gen   --config recipes/eval/alpaca_eval.yaml [--model_path DIR]
    python eval/alpaca_eval.py judge --config recipes/eval/alpaca_eval.yaml [--judge_base_url URL]

`version: 2` (default) is AlpacaEval 2: weighted GPT-4-turbo annotator against gpt4_1106_preview;
`version: 1` is AlpacaEval 1: the GPT-4 ranking annotator against text_davinci_003. The reference
outputs (which also carry the 805 instructions) are downloaded once and cached, or given with
`reference_file`. `judge` prints the win rate, plus the length-controlled win rate when it can be
computed, and exits with status 2 (scores withheld) when annotations are missing, unless
`--allow_failures true`. Reruns resume from alpaca_eval's annotation cache in `output_dir`.
"""

from __future__ import annotations

import sys
from pathlib import Path


# This file is named like the package it drives: keep its own folder off the import path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import logging  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from deita_train.config import parse_config, setup_logging  # noqa: E402
from deita_train.evaluation import alpaca  # noqa: E402
from deita_train.manifest import write_manifest  # noqa: E402


logger = logging.getLogger("eval.alpaca_eval")
SUBCOMMANDS = ("gen", "judge")


@dataclass
class AlpacaEvalConfig:
    """Settings for both AlpacaEval steps (each step reads the ones it needs)."""

    output_dir: str = field(
        default="runs/eval/alpaca_eval", metadata={"help": "model_outputs.json and results go here."}
    )
    version: int = field(
        default=2, metadata={"help": "2 = AlpacaEval 2 (weighted, gpt4_turbo baseline), 1 = AlpacaEval 1."}
    )
    reference_file: str | None = field(default=None, metadata={"help": "Baseline outputs; default: upstream, cached."})
    data_cache_dir: str | None = field(
        default=None, metadata={"help": "Download cache; default ~/.cache/deita_train."}
    )
    max_instances: int | None = field(default=None, metadata={"help": "First N instructions only (smoke runs)."})
    # gen
    model_path: str | None = None
    generator: str | None = field(
        default=None, metadata={"help": "Name in model_outputs.json; default: model_path's name."}
    )
    backend: str = "auto"
    device: str | None = None
    dtype: str = "auto"
    batch_size: int = 1
    max_new_tokens: int = field(default=2048, metadata={"help": "As in alpaca_eval's deita-7b-v1.0 model config."})
    temperature: float = field(default=0.7, metadata={"help": "As in alpaca_eval's deita-7b-v1.0 model config."})
    top_p: float = 1.0
    seed: int = 0
    # judge
    model_outputs: str | None = field(
        default=None, metadata={"help": "Outputs to judge; default: <output_dir>/model_outputs.json."}
    )
    judge_model: str | None = field(default=None, metadata={"help": "Default: the version's GPT-4 judge."})
    judge_base_url: str | None = None
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_max_concurrency: int = 5
    judge_max_retries: int = 6
    judge_timeout: float = 120.0
    length_controlled: bool | None = field(default=None, metadata={"help": "None: when available; true: required."})
    allow_failures: bool = False

    def outputs_path(self) -> Path:
        return Path(self.model_outputs) if self.model_outputs else Path(self.output_dir) / "model_outputs.json"


def gen(cfg: AlpacaEvalConfig) -> None:
    from deita_train.evaluation.generation import generate_alpaca_outputs, load_generator

    if not cfg.model_path:
        raise SystemExit("gen needs --model_path")
    ref = alpaca.reference_file(cfg.version, cfg.reference_file, cfg.data_cache_dir)
    instructions = alpaca.load_instructions(ref)[: cfg.max_instances]
    name = cfg.generator or Path(cfg.model_path.rstrip("/")).name
    out = cfg.outputs_path()
    generator = load_generator(cfg.model_path, cfg.backend, cfg.device, cfg.dtype, cfg.batch_size)
    counts = generate_alpaca_outputs(
        generator, instructions, out, name, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed
    )
    write_manifest(
        out.with_suffix(".manifest.json"),
        step="alpaca_eval.gen",
        config=cfg,
        inputs=[ref],
        outputs=[out],
        counts=counts,
    )
    logger.info("outputs: %s (%s)", out, counts)


def judge(cfg: AlpacaEvalConfig) -> int:
    out = cfg.outputs_path()
    result = alpaca.run_alpaca_eval(
        out,
        cfg.output_dir,
        version=cfg.version,
        reference=cfg.reference_file,
        judge_model=cfg.judge_model,
        base_url=cfg.judge_base_url,
        api_key_env=cfg.judge_api_key_env,
        max_concurrency=cfg.judge_max_concurrency,
        max_retries=cfg.judge_max_retries,
        timeout=cfg.judge_timeout,
        max_instances=cfg.max_instances,
        length_controlled=cfg.length_controlled,
        cache_dir=cfg.data_cache_dir,
    )
    write_manifest(
        Path(cfg.output_dir) / "manifest.json",
        step="alpaca_eval.judge",
        config=cfg,
        inputs=[out, result["reference_file"]],
        outputs=[Path(cfg.output_dir) / "results.json"],
        counts={k: result.get(k) for k in ("n_outputs", "n_total", "n_failed", "n_wins", "n_wins_base", "n_draws")},
    )
    print(alpaca.format_result(result, allow_failures=cfg.allow_failures))
    return 0 if result["complete"] or cfg.allow_failures else 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBCOMMANDS:
        print(__doc__)
        print(f"usage: python eval/alpaca_eval.py {{{','.join(SUBCOMMANDS)}}} --config RECIPE [--key value ...]")
        return 1
    setup_logging()
    (cfg,) = parse_config(AlpacaEvalConfig, args=argv[1:])
    if argv[0] == "gen":
        gen(cfg)
        return 0
    return judge(cfg)


if __name__ == "__main__":
    sys.exit(main())
