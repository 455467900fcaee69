"""AlpacaEval: the leaderboard's own metric on real annotations, and alpaca_eval end to end against a local judge."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import yaml

from deita_train.evaluation import alpaca
from deita_train.testing.judge_stub import ae2_probability_second, judge_responder
from deita_train.testing.openai_stub import Fault, StubOpenAIServer


REPO = Path(__file__).resolve().parents[1]
N = 8


def _shared_alpaca() -> Path | None:
    from conftest import shared_data_dir

    d = shared_data_dir() / "alpaca_eval"
    return d if (d / "reference_gpt4_1106_preview_v2.json").is_file() else None


@pytest.fixture()
def files(tmp_path) -> dict[str, Path]:
    """8 real instructions with the real AE1/AE2 references and example outputs when ../shared/data is
    present; otherwise a synthetic set of the same shape (the project ships no AlpacaEval data: CC BY-NC)."""
    d = _shared_alpaca()
    out = {}
    if d is not None:
        out["v2"] = d / "reference_gpt4_1106_preview_v2.json"
        out["v1"] = d / "reference_text_davinci_003_v1.json"
        model = json.loads((d / "example_outputs.json").read_text())[:N]
    else:
        instr = [f"Explain idea number {i} in simple words." for i in range(N)]
        for v, gen, n in (("v2", "gpt4_1106_preview", 300), ("v1", "text_davinci_003", 120)):
            rows = [
                {"instruction": s, "output": "x " * (n + 40 * i), "generator": gen, "dataset": "d"}
                for i, s in enumerate(instr)
            ]
            out[v] = tmp_path / f"ref_{v}.json"
            out[v].write_text(json.dumps(rows))
        # Never the length of the v1 reference (a tie goes to whichever output the judge is shown first).
        model = [
            {"instruction": s, "output": "y " * (65 + 50 * i), "generator": "example", "dataset": "d"}
            for i, s in enumerate(instr)
        ]
    out["model"] = tmp_path / "model_outputs.json"
    out["model"].write_text(json.dumps(model))
    return out


def _expected_ae2(model_rows, ref_rows) -> float:
    """The stub's preference is symmetric in presentation order: P(model wins) = logistic(len diff)."""
    ps = [
        ae2_probability_second(len(r["output"].strip()), len(m["output"].strip()))
        for m, r in zip(model_rows, ref_rows)
    ]
    return 100 * math.fsum(ps) / len(ps)


# ------------------------------------------------------------------ the golden numbers


@pytest.mark.parametrize(
    "annotator, expected, counts",
    [
        ("weighted_alpaca_eval_gpt4_turbo", 2.5915, (17, 785, 3)),
        ("alpaca_eval_gpt4", 26.4596, (205, 584, 16)),
    ],
)
def test_win_rate_over_real_alpaca_7b_annotations(annotator, expected, counts):
    d = _shared_alpaca()
    if d is None:
        pytest.skip("the real alpaca-7b annotations are not present")
    annotations = json.loads((d / f"annotations_alpaca-7b_{annotator}.json").read_text())
    metrics = alpaca.win_rate(annotations)
    assert round(metrics["win_rate"], 4) == expected
    assert (metrics["n_wins"], metrics["n_wins_base"], metrics["n_draws"], metrics["n_total"]) == (*counts, 805)


# ------------------------------------------------------------------ annotator config


def test_annotator_config_points_at_the_endpoint_and_holds_no_key(tmp_path):
    path = alpaca.write_annotator_config(
        tmp_path, 2, judge_model="local-judge", base_url="http://127.0.0.1:9/v1", max_retries=3
    )
    config = yaml.safe_load(path.read_text())
    ((name, spec),) = config.items()
    assert name == path.parent.name == "weighted_alpaca_eval_gpt4_turbo--local-judge"
    kwargs = spec["completions_kwargs"]
    assert (kwargs["model_name"], kwargs["logprobs"], kwargs["top_logprobs"], kwargs["max_tokens"]) == (
        "local-judge",
        True,
        5,
        1,
    )
    assert spec["fn_completion_parser"] == "logprob_parser" and Path(spec["prompt_template"]).is_file()
    assert kwargs["client_kwargs"] == {"max_retries": 3, "timeout": 60.0}
    assert yaml.safe_load(Path(kwargs["client_config_path"]).read_text()) == {
        "default": [{"base_url": "http://127.0.0.1:9/v1"}]
    }
    assert "api_key" not in path.read_text() + Path(kwargs["client_config_path"]).read_text()
    v1 = yaml.safe_load(alpaca.write_annotator_config(tmp_path, 1).read_text())
    assert list(v1) == ["alpaca_eval_gpt4"] and v1["alpaca_eval_gpt4"]["fn_completion_parser"] == "ranking_parser"


def test_length_controlled_is_reported_unavailable_with_a_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty cache: no df_gamed.csv
    assert alpaca.length_controlled_availability(1, 805) == (
        False,
        "the length-controlled win rate is defined for AlpacaEval 2 only",
    )
    ok, reason = alpaca.length_controlled_availability(2, 8)
    assert not ok and "805" in reason
    ok, reason = alpaca.length_controlled_availability(2, 805)
    assert not ok and "df_gamed.csv" in reason


def test_misaligned_outputs_name_the_record(files, tmp_path):
    rows = json.loads(files["model"].read_text())
    rows[3]["instruction"] = "something else"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rows))
    with pytest.raises(alpaca.AlpacaEvalDataError, match="record 3: field 'instruction'"):
        alpaca.run_alpaca_eval(
            bad, tmp_path / "run", reference=files["v2"], base_url="http://127.0.0.1:9/v1", max_instances=N
        )


# ------------------------------------------------------------------ end to end against the stub judge


def test_alpaca_eval_2_end_to_end_then_from_cache(files, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-secret-never-on-disk")
    run = tmp_path / "run"
    with StubOpenAIServer(judge_responder) as server:
        kwargs = dict(reference=files["v2"], base_url=server.base_url, api_key_env="MY_JUDGE_KEY", max_instances=N)
        result = alpaca.run_alpaca_eval(files["model"], run, version=2, **kwargs)
        assert server.request_count == N
        assert all(body["logprobs"] is True and body["top_logprobs"] == 5 for body in server.requests)
        again = alpaca.run_alpaca_eval(files["model"], run, version=2, **kwargs)
        assert server.request_count == N  # every annotation came from alpaca_eval's cache
    model_rows = json.loads(files["model"].read_text())[:N]
    ref_rows = json.loads(files["v2"].read_text())[:N]
    assert result["win_rate"] == pytest.approx(_expected_ae2(model_rows, ref_rows), abs=1e-6)
    assert (result["n_outputs"], result["n_total"], result["n_failed"], result["complete"]) == (N, N, 0, True)
    assert result["length_controlled_winrate"] is None and "805" in result["length_controlled_unavailable"]
    assert again["win_rate"] == pytest.approx(result["win_rate"], abs=1e-6)  # the cache stores rounded floats
    assert json.loads((run / "results.json").read_text())["win_rate"] == again["win_rate"]
    for path in run.rglob("*"):
        if path.is_file():
            assert b"sk-secret-never-on-disk" not in path.read_bytes(), path
    text = alpaca.format_result(result)
    assert f"{result['win_rate']:.4f}" in text and "unavailable" in text


def test_alpaca_eval_1_ranks_by_the_judges_answer(files, tmp_path):
    with StubOpenAIServer(judge_responder) as server:
        result = alpaca.run_alpaca_eval(
            files["model"],
            tmp_path / "run",
            version=1,
            reference=files["v1"],
            base_url=server.base_url,
            max_instances=N,
        )
    model_rows = json.loads(files["model"].read_text())[:N]
    ref_rows = json.loads(files["v1"].read_text())[:N]
    wins = sum(len(m["output"].strip()) > len(r["output"].strip()) for m, r in zip(model_rows, ref_rows))
    assert result["win_rate"] == pytest.approx(100 * wins / N)
    assert (result["n_wins"], result["n_total"]) == (wins, N)


def test_failed_annotations_are_counted_withheld_and_retried(files, tmp_path):
    run = tmp_path / "run"
    faults = [Fault("garbage_text", nth=2, times=1), Fault("500", nth=5, times=1)]  # the 500 is retried by the client
    with StubOpenAIServer(judge_responder, faults=faults) as server:
        result = alpaca.run_alpaca_eval(
            files["model"], run, reference=files["v2"], base_url=server.base_url, max_instances=N
        )
        assert server.faults_fired == ["garbage_text", "500"]
    assert (result["n_total"], result["n_failed"], result["complete"]) == (N - 1, 1, False)
    text = alpaca.format_result(result)
    assert "SCORES WITHHELD" in text and f"{result['win_rate']:.4f}" not in text
    assert "PARTIAL" in alpaca.format_result(result, allow_failures=True)
    with StubOpenAIServer(judge_responder) as server:
        fixed = alpaca.run_alpaca_eval(
            files["model"], run, reference=files["v2"], base_url=server.base_url, max_instances=N
        )
        assert server.request_count == 1  # only the annotation that failed is asked again
    assert (fixed["n_total"], fixed["complete"]) == (N, True)


def test_judge_step_exit_status(files, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("eval_alpaca_eval_judge", REPO / "eval" / "alpaca_eval.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    args = ["judge", "--output_dir", str(tmp_path / "run"), "--model_outputs", str(files["model"])]
    args += ["--reference_file", str(files["v2"]), "--max_instances", str(N), "--judge_max_retries", "0"]
    with StubOpenAIServer(judge_responder, faults=[Fault("garbage_text", nth=0, times=1)]) as server:
        assert script.main([*args, "--judge_base_url", server.base_url]) == 2
    assert "SCORES WITHHELD" in capsys.readouterr().out
    with StubOpenAIServer(judge_responder) as server:
        assert script.main([*args, "--judge_base_url", server.base_url]) == 0
    assert "win rate" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["counts"]["n_total"] == N and manifest["counts"]["n_failed"] == 0


@pytest.mark.parametrize("recipe, version", [("alpaca_eval.yaml", 2), ("alpaca_eval_v1.yaml", 1)])
def test_recipes_parse(recipe, version):
    from deita_train.config import parse_config

    spec = importlib.util.spec_from_file_location("eval_alpaca_eval_recipe", REPO / "eval" / "alpaca_eval.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)
    (cfg,) = parse_config(script.AlpacaEvalConfig, args=["--config", str(REPO / "recipes" / "eval" / recipe)])
    assert cfg.version == version and cfg.judge_model == alpaca.VERSIONS[version]["judge_model"]
    assert alpaca.annotator_name(cfg.version, cfg.judge_model) == alpaca.VERSIONS[version]["annotator"]


def test_format_result_without_any_annotation():
    # What run_alpaca_eval records when the judge produced nothing: no win_rate, no standard_error.
    result = {"version": 2, "annotator": "weighted_alpaca_eval_gpt4_turbo", "judge_model": "j", "generator": "tiny",
              "baseline": "gpt4_1106_preview", "n_outputs": N, "n_failed": N, "complete": False, "n_total": 0,
              "avg_length": 10, "length_controlled_winrate": None}  # fmt: skip
    assert "SCORES WITHHELD" in alpaca.format_result(result)
    text = alpaca.format_result(result, allow_failures=True)
    assert f"win rate: unavailable (no annotations: 0/{N} annotated, {N} failed)" in text
