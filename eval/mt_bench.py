"""MT-Bench for a checkpoint: `gen` answers, `judge` them with an OpenAI-compatible judge, `show` the scores.

    python eval/mt_bench.py gen   --config recipes/eval/mt_bench.yaml [--model_path DIR --model_id NAME]
    python eval/mt_bench.py judge --config recipes/eval/mt_bench.yaml [--judge_model gpt-4 --judge_base_url URL]
    python eval/mt_bench.py show  --config recipes/eval/mt_bench.yaml

One recipe serves all three steps. Files follow FastChat's layout under `bench_dir`
(`model_answer/<model_id>.jsonl`, `model_judgment/<judge>_single.jsonl`), so FastChat's own
`show_result.py` reads them too. `gen` and `judge` resume where a killed run stopped. `show` exits
with status 2 and withholds the scores while judgments failed or are missing, unless
`--allow_failures true`. The judge's API key is read from the variable named by `judge_api_key_env`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deita_train.config import parse_config, setup_logging
from deita_train.evaluation import mt_bench as mb
from deita_train.manifest import write_manifest


logger = logging.getLogger("eval.mt_bench")
SUBCOMMANDS = ("gen", "judge", "show")


@dataclass
class MTBenchConfig:
    """Settings for the three MT-Bench steps (each step reads the ones it needs)."""

    bench_dir: str = field(default="runs/eval/mt_bench", metadata={"help": "FastChat-style output folder."})
    question_file: str | None = field(
        default=None, metadata={"help": "Questions; default: FastChat's, downloaded and cached."}
    )
    reference_file: str | None = field(
        default=None,
        metadata={"help": "Reference answers for math/reasoning/coding; default: FastChat's GPT-4 references."},
    )
    judge_prompt_file: str | None = field(
        default=None, metadata={"help": "Judge prompts; default: FastChat's, vendored."}
    )
    data_cache_dir: str | None = field(
        default=None, metadata={"help": "Download cache; default ~/.cache/deita_train."}
    )
    first_n: int | None = field(default=None, metadata={"help": "Only the first N questions (debugging)."})
    # gen
    model_path: str | None = field(default=None, metadata={"help": "Checkpoint (local dir or Hub id) to answer with."})
    model_id: str | None = field(
        default=None, metadata={"help": "Name in the answer/judgment files; default: model_path's name."}
    )
    backend: str = field(default="auto", metadata={"help": "hf, vllm, or auto (vllm when installed with a GPU)."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ...; default: cuda when available."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16."})
    batch_size: int = field(
        default=1, metadata={"help": "Questions per HF generate call (1 = FastChat's order and seeds)."}
    )
    max_new_tokens: int = field(default=1024, metadata={"help": "FastChat's default is 1024."})
    num_choices: int = 1
    temperature: float | None = field(
        default=None, metadata={"help": "Override FastChat's per-category temperatures."}
    )
    # judge
    model_list: list[str] | None = field(default=None, metadata={"help": "Models to judge/show; default: [model_id]."})
    judge_model: str = "gpt-4"
    judge_base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible endpoint; default: OpenAI."})
    judge_api_key_env: str = "OPENAI_API_KEY"
    judge_max_concurrency: int = 8
    judge_max_retries: int = 6
    judge_timeout: float = 120.0
    judge_backoff_base: float = 1.0
    judge_cache_dir: str | None = field(
        default=None, metadata={"help": "Request cache; default: <bench_dir>/judge_cache."}
    )
    retry_failed: bool = field(default=True, metadata={"help": "Retry judgments that ended in an API error."})
    # show
    allow_failures: bool = field(
        default=False, metadata={"help": "Show partial scores despite failed/missing judgments."}
    )
    plot: bool = field(default=True, metadata={"help": "Save a radar plot (PNG) beside the judgments."})

    def resolved_model_id(self) -> str:
        if self.model_id:
            return self.model_id
        if self.model_path:
            return Path(self.model_path.rstrip("/")).name
        raise ValueError("set model_id (or model_path)")

    def models(self) -> list[str]:
        return list(self.model_list) if self.model_list else [self.resolved_model_id()]


def _questions(cfg: MTBenchConfig) -> tuple[Path, list[dict]]:
    path = mb.question_file(cfg.question_file, cfg.data_cache_dir)
    return path, mb.load_questions(path, first_n=cfg.first_n)


def gen(cfg: MTBenchConfig) -> None:
    from deita_train.evaluation.generation import generate_mt_bench_answers, load_generator

    if not cfg.model_path:
        raise SystemExit("gen needs --model_path")
    qpath, questions = _questions(cfg)
    model_id = cfg.resolved_model_id()
    out = mb.answer_file(cfg.bench_dir, model_id)
    generator = load_generator(cfg.model_path, cfg.backend, cfg.device, cfg.dtype, cfg.batch_size)
    counts = generate_mt_bench_answers(
        generator, questions, out, model_id, cfg.max_new_tokens, cfg.num_choices, cfg.temperature
    )
    write_manifest(
        out.with_suffix(".manifest.json"),
        step="mt_bench.gen",
        config=cfg,
        inputs=[qpath],
        outputs=[out],
        counts=counts,
        extra={"backend": type(generator).__name__},
    )
    logger.info("answers: %s (%s)", out, counts)


def judge(cfg: MTBenchConfig) -> None:
    from deita_train.llm import LLMClient, LLMConfig

    qpath, questions = _questions(cfg)
    prompts_path = mb.judge_prompt_file(cfg.judge_prompt_file)
    prompts = mb.load_judge_prompts(prompts_path)
    needs_ref = any(q["category"] in mb.NEED_REF_CATS for q in questions)
    ref_path = mb.reference_file(cfg.reference_file, cfg.data_cache_dir) if needs_ref else None
    references = mb.load_answers(ref_path) if ref_path else {}
    answers = {m: mb.load_answers(mb.answer_file(cfg.bench_dir, m)) for m in cfg.models()}
    matches = mb.make_matches(questions, answers, prompts, references)
    client = LLMClient(
        LLMConfig(
            model=cfg.judge_model,
            base_url=cfg.judge_base_url,
            api_key_env=cfg.judge_api_key_env,
            max_concurrency=cfg.judge_max_concurrency,
            max_retries=cfg.judge_max_retries,
            timeout=cfg.judge_timeout,
            backoff_base=cfg.judge_backoff_base,
            cache_dir=cfg.judge_cache_dir or str(Path(cfg.bench_dir) / "judge_cache"),
        )
    )
    out = mb.judgment_file(cfg.bench_dir, cfg.judge_model)
    report = mb.run_judging(matches, client, out, retry_failed=cfg.retry_failed)
    counts = {k: v for k, v in asdict(report).items() if k.startswith("n_")}
    counts["n_failed"] = report.n_failed
    inputs = [
        qpath,
        prompts_path,
        *([ref_path] if ref_path else []),
        *(mb.answer_file(cfg.bench_dir, m) for m in cfg.models()),
    ]
    write_manifest(
        out.with_suffix(".manifest.json"),
        step="mt_bench.judge",
        config=cfg,
        inputs=inputs,
        outputs=[out],
        counts=counts,
        extra={"llm_stats": report.llm_stats, "judge_params": mb.JUDGE_PARAMS},
    )
    logger.info(
        "judgments: %s: %d matches, %d already done, %d judged now; ok %d, parse failures %d, API errors %d; %s",
        out,
        report.n_matches,
        report.n_already_done,
        report.n_judged,
        report.n_ok,
        report.n_parse_failed,
        report.n_api_error,
        report.llm_stats,
    )
    if report.n_failed:
        logger.warning(
            "%d judgment(s) failed; `show` will withhold scores until they are fixed or allowed", report.n_failed
        )


def show(cfg: MTBenchConfig) -> int:
    qpath, questions = _questions(cfg)
    path = mb.judgment_file(cfg.bench_dir, cfg.judge_model)
    stem = path.with_suffix("")
    try:
        text, _ = mb.show(
            path,
            judge_model=cfg.judge_model,
            models=cfg.models(),
            questions=questions,
            allow_failures=cfg.allow_failures,
            plot_path=stem.with_name(stem.name + "_radar.png") if cfg.plot else None,
            summary_path=stem.with_name(stem.name + "_summary.json"),
            question_file=qpath,
        )
    except mb.FailedJudgmentsError as e:
        print(e)
        return 2
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBCOMMANDS:
        print(__doc__)
        print(f"usage: python eval/mt_bench.py {{{','.join(SUBCOMMANDS)}}} --config RECIPE [--key value ...]")
        return 1
    setup_logging()
    (cfg,) = parse_config(MTBenchConfig, args=argv[1:])
    step = argv[0]
    if step == "gen":
        gen(cfg)
    elif step == "judge":
        judge(cfg)
    else:
        return show(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
