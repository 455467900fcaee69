"""AlpacaEval through the `alpaca_eval` package, pointed at any OpenAI-compatible judge, offline-capable.

The package itself does the annotation and the metric, so win rates are the leaderboard's. What
this module adds is what it needs to run outside its authors' setup:

* a local reference file (the upstream `results/<baseline>/model_outputs.json`, downloaded once and
  verified, or a path) instead of the Hub dataset loader that `datasets>=4` no longer supports;
* an annotator config written into the run directory: the upstream config of the chosen version
  (AlpacaEval 2: `weighted_alpaca_eval_gpt4_turbo`, logprobs of the `m`/`M` tokens; AlpacaEval 1:
  `alpaca_eval_gpt4`, a ranking), with the judge model, endpoint, retries and concurrency set. The
  endpoint goes in an `openai` client config file; the API key never goes to disk (the client reads
  it from the environment);
* the annotation cache sits beside that config, so a rerun resumes, and missing annotations are
  not cached, so a rerun retries them;
* counts: annotations the judge did not produce (API errors, unparsable answers) are dropped by
  alpaca_eval's metric; here they are counted, and the caller decides whether a win rate over
  fewer instructions than given may be reported;
* the length-controlled win rate only when it can be right: AlpacaEval 2, the full 805-instruction
  set, and the `df_gamed.csv` regularization file available from the Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from deita_train.evaluation import downloads
from deita_train.jsonl import write_json


logger = logging.getLogger(__name__)

N_INSTRUCTIONS = 805
VERSIONS: dict[int, dict[str, str]] = {
    2: {
        "annotator": "weighted_alpaca_eval_gpt4_turbo",
        "judge_model": "gpt-4-1106-preview",
        "reference": "alpaca_eval_reference_v2",
        "baseline": "gpt4_1106_preview",
    },
    1: {
        "annotator": "alpaca_eval_gpt4",
        "judge_model": "gpt-4",
        "reference": "alpaca_eval_reference_v1",
        "baseline": "text_davinci_003",
    },
}
DF_GAMED = {"repo_id": "tatsu-lab/alpaca_eval", "filename": "df_gamed.csv", "repo_type": "dataset"}


class AlpacaEvalDataError(ValueError):
    """Model outputs that cannot be compared with the reference: names the file, the index and the field."""


def import_alpaca_eval() -> Any:
    """`alpaca_eval`, imported quietly; says what to install when its `pkg_resources` import fails."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated")
            import alpaca_eval
            import alpaca_eval.metrics  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name == "pkg_resources":
            raise ImportError(
                "alpaca-eval 0.6.6 imports pkg_resources, which setuptools>=81 removed: pip install 'setuptools<81'"
            ) from e
        raise
    return alpaca_eval


def _version(version: int | str) -> dict[str, str]:
    v = int(version)
    if v not in VERSIONS:
        raise ValueError(f"AlpacaEval version must be 1 or 2, got {version!r}")
    return VERSIONS[v]


def reference_file(
    version: int | str = 2, path: str | Path | None = None, cache_dir: str | Path | None = None
) -> Path:
    """The baseline outputs of AlpacaEval `version`: `path` when given, else the upstream file (cached)."""
    return downloads.resolve(path, _version(version)["reference"], cache_dir)


def load_outputs(path: str | Path) -> list[dict[str, Any]]:
    """A `model_outputs.json` list, validated: every row has string `instruction` and `output`."""
    path = Path(path)
    rows = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(rows, list):
        raise AlpacaEvalDataError(f"{path}: expected a JSON list of {{instruction, output, generator, dataset}}")
    for i, row in enumerate(rows):
        for key in ("instruction", "output"):
            if not isinstance(row, dict) or not isinstance(row.get(key), str):
                raise AlpacaEvalDataError(f"{path}: record {i}: field {key!r} must be a string")
    return rows


def load_instructions(path: str | Path) -> list[dict[str, str]]:
    """Instructions (with their `dataset`) from a model_outputs-style JSON list or a JSONL of {instruction, dataset}."""
    path = Path(path)
    if path.suffix == ".jsonl":
        from deita_train.jsonl import read_jsonl

        rows = read_jsonl(path)
    else:
        rows = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
            raise AlpacaEvalDataError(f"{path}: record {i}: field 'instruction' must be a string")
        out.append({"instruction": row["instruction"], "dataset": str(row.get("dataset", "unknown"))})
    return out


def check_aligned(
    model_outputs: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]], name: str
) -> None:
    """Model outputs must answer the reference's instructions, in the same order (else LC is NaN or wrong)."""
    if len(model_outputs) != len(reference):
        raise AlpacaEvalDataError(
            f"{name}: {len(model_outputs)} outputs for {len(reference)} reference instructions; generate the full set "
            "(or set max_instances to evaluate the first N of both)"
        )
    for i, (m, r) in enumerate(zip(model_outputs, reference)):
        if m["instruction"] != r["instruction"]:
            raise AlpacaEvalDataError(
                f"{name}: record {i}: field 'instruction' differs from the reference's ({m['instruction'][:60]!r} vs "
                f"{r['instruction'][:60]!r}); outputs must follow the reference order"
            )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)


def annotator_name(version: int | str, judge_model: str | None = None) -> str:
    """The upstream annotator name, suffixed with the judge when it is not the upstream one (separate caches)."""
    spec = _version(version)
    judge = judge_model or spec["judge_model"]
    return spec["annotator"] if judge == spec["judge_model"] else f"{spec['annotator']}--{_slug(judge)}"


def write_annotator_config(
    run_dir: str | Path,
    version: int | str = 2,
    judge_model: str | None = None,
    base_url: str | None = None,
    max_concurrency: int = 5,
    max_retries: int = 6,
    timeout: float = 60.0,
) -> Path:
    """Write `<run_dir>/annotators/<name>/configs.yaml` (+ the endpoint's client config); returns the configs path.

    The upstream config of the version is copied with only the judge model and the transport
    changed; the prompt template is referenced by absolute path inside the installed package.
    """
    constants = import_alpaca_eval().constants
    spec = _version(version)
    upstream_dir = Path(constants.EVALUATORS_CONFIG_DIR) / spec["annotator"]
    upstream = yaml.safe_load((upstream_dir / "configs.yaml").read_text())[spec["annotator"]]
    name = annotator_name(version, judge_model)
    config_dir = Path(run_dir).resolve() / "annotators" / name
    config_dir.mkdir(parents=True, exist_ok=True)
    client_config = config_dir / "openai_client.yaml"
    # No api_key: `openai.OpenAI()` reads OPENAI_API_KEY from the environment at call time.
    client_config.write_text(yaml.safe_dump({"default": [{"base_url": base_url} if base_url else {}]}))
    config = dict(upstream)
    config["prompt_template"] = str(Path(constants.EVALUATORS_CONFIG_DIR) / upstream["prompt_template"])
    kwargs = dict(upstream["completions_kwargs"])
    kwargs.update(
        model_name=judge_model or spec["judge_model"],
        client_config_path=str(client_config),
        client_kwargs={"max_retries": max_retries, "timeout": timeout},
        num_procs=max_concurrency,
    )
    config["completions_kwargs"] = kwargs
    path = config_dir / "configs.yaml"
    path.write_text(yaml.safe_dump({name: config}, sort_keys=False))
    return path


@contextlib.contextmanager
def _api_key_from(api_key_env: str) -> Iterator[None]:
    """Expose the key in `api_key_env` as OPENAI_API_KEY for the duration (a local endpoint needs none)."""
    old = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = os.environ.get(api_key_env) or old or "EMPTY"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = old


def win_rate(annotations: Any) -> dict[str, float]:
    """alpaca_eval's own `get_winrate` (the leaderboard's `win_rate`), as plain floats."""
    get_winrate = import_alpaca_eval().metrics.get_winrate
    return {k: int(v) if k.startswith("n_") else float(v) for k, v in get_winrate(annotations).items()}


def length_controlled_availability(version: int | str, n_outputs: int) -> tuple[bool, str]:
    """Whether the length-controlled win rate can be computed here, and why not."""
    if int(version) != 2:
        return False, "the length-controlled win rate is defined for AlpacaEval 2 only"
    if n_outputs != N_INSTRUCTIONS:
        return False, f"needs all {N_INSTRUCTIONS} instructions in the reference order (got {n_outputs})"
    try:
        from huggingface_hub import hf_hub_download

        hf_hub_download(**DF_GAMED)
    except Exception as e:  # offline with no cached copy, no network, gated, ...
        return False, f"df_gamed.csv (tatsu-lab/alpaca_eval on the HF Hub) is not available: {type(e).__name__}"
    return True, ""


def run_alpaca_eval(
    model_outputs: str | Path,
    run_dir: str | Path,
    version: int | str = 2,
    reference: str | Path | None = None,
    judge_model: str | None = None,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    max_concurrency: int = 5,
    max_retries: int = 6,
    timeout: float = 60.0,
    max_instances: int | None = None,
    length_controlled: bool | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Annotate `model_outputs` against the reference with alpaca_eval and return the metrics with counts.

    `max_instances` evaluates the first N instructions of both (a smoke run, not a leaderboard
    number). `length_controlled`: None computes it when available, True requires it, False skips.
    Writes `<run_dir>/results/{leaderboard.csv,annotations.json}` and `<run_dir>/results.json`.
    """
    alpaca_eval = import_alpaca_eval()
    spec = _version(version)
    run_dir = Path(run_dir).resolve()
    model_path = Path(model_outputs)
    outputs = load_outputs(model_path)
    ref_path = reference_file(version, reference, cache_dir)
    ref = load_outputs(ref_path)
    if max_instances is not None:
        outputs, ref = outputs[:max_instances], ref[:max_instances]
    check_aligned(outputs, ref, str(model_path))
    generator = str(outputs[0].get("generator") or "model") if outputs else "model"
    config_path = write_annotator_config(
        run_dir,
        version,
        judge_model,
        base_url,
        max_concurrency=max_concurrency,
        max_retries=max_retries,
        timeout=timeout,
    )
    # Missing annotations are cached as placeholders on a first run (alpaca_eval 0.6.6 crashes with
    # is_store_missing_annotations=False and no cache yet); later runs ignore those placeholders, so
    # what failed before is requested again.
    has_cache = any(config_path.parent.glob("annotations_seed*_configs.json"))
    with _api_key_from(api_key_env):
        _, annotations = alpaca_eval.evaluate(
            model_outputs=[{**o, "generator": generator} for o in outputs],
            reference_outputs=ref,
            annotators_config=str(config_path),
            name=generator,
            output_path=str(run_dir / "results"),
            precomputed_leaderboard=None,
            is_cache_leaderboard=False,
            is_return_instead_of_print=True,
            fn_metric="get_winrate",
            sort_by="win_rate",
            is_store_missing_annotations=not has_cache,
        )
    metrics = win_rate(annotations) if annotations else {"n_total": 0}
    n_outputs = len(outputs)
    n_failed = n_outputs - int(metrics.get("n_total", 0))
    result: dict[str, Any] = {
        "version": int(version),
        "annotator": annotator_name(version, judge_model),
        "judge_model": judge_model or spec["judge_model"],
        "generator": generator,
        "baseline": str(ref[0].get("generator", spec["baseline"])) if ref else spec["baseline"],
        "reference_file": str(ref_path),
        "n_outputs": n_outputs,
        "n_failed": n_failed,
        "complete": n_failed == 0,
        **metrics,
        "avg_length": int(sum(len(o["output"]) for o in outputs) / max(1, n_outputs)),
    }
    ok, reason = (
        (False, "not requested") if length_controlled is False else length_controlled_availability(version, n_outputs)
    )
    if ok:
        from alpaca_eval.metrics.glm_winrate import get_length_controlled_winrate

        lc = get_length_controlled_winrate(annotations, save_weights_dir=str(run_dir / "lc_weights"))
        result["length_controlled_winrate"] = float(lc["length_controlled_winrate"])
        result["lc_standard_error"] = float(lc["lc_standard_error"])
    else:
        if length_controlled:
            raise RuntimeError(f"length-controlled win rate requested but unavailable: {reason}")
        result["length_controlled_winrate"] = None
        result["length_controlled_unavailable"] = reason
    write_json(run_dir / "results.json", result)
    return result


def format_result(result: Mapping[str, Any], allow_failures: bool = False) -> str:
    """A short report: win rates next to the counts; scores withheld when judgments are missing unless allowed."""
    lines = [
        f"AlpacaEval {result['version']} ({result['annotator']}, judge {result['judge_model']}) "
        f"{result['generator']} vs {result['baseline']}",
        f"  annotated {result.get('n_total', 0)}/{result['n_outputs']} (failed {result['n_failed']}), "
        f"wins {result.get('n_wins', 0)}, losses {result.get('n_wins_base', 0)}, draws {result.get('n_draws', 0)}, "
        f"avg length {result['avg_length']}",
    ]
    if not result["complete"] and not allow_failures:
        lines.append(
            f"  SCORES WITHHELD: {result['n_failed']} instruction(s) have no annotation; a win rate over the rest would "
            "not be comparable. Rerun `judge` (missing annotations are retried) or pass --allow_failures true."
        )
        return "\n".join(lines)
    flag = "" if result["complete"] else " (PARTIAL: over the annotated instructions only)"
    if result.get("win_rate") is None:  # no annotation at all: alpaca_eval computed no metric
        lines.append(
            f"  win rate: unavailable (no annotations: {result.get('n_total', 0)}/{result['n_outputs']} annotated, "
            f"{result['n_failed']} failed)"
        )
        return "\n".join(lines)
    lines.append(f"  win rate {result['win_rate']:.4f} +/- {result['standard_error']:.4f}{flag}")
    if result.get("length_controlled_winrate") is not None:
        lines.append(f"  length-controlled win rate {result['length_controlled_winrate']:.4f}{flag}")
    else:
        lines.append(f"  length-controlled win rate: unavailable ({result.get('length_controlled_unavailable')})")
    return "\n".join(lines)
