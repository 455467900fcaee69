"""The run report: every figure is drawn from the files the stages wrote, and the Markdown links them."""

import json

from deita_train.demo import stage_report
from deita_train.jsonl import write_jsonl


def test_report_from_stage_outputs(tmp_path):
    run = tmp_path / "run"
    write_jsonl(
        run / "score" / "scored.jsonl",
        [
            {"id": f"r{i}", "complexity_scores": [1 + i % 5, 2.0], "quality_scores": [3.0, 1 + i % 4]}
            for i in range(30)
        ],
    )
    (run / "select").mkdir(parents=True)
    stats = {"budgets": [5, 10], "kept_vs_scanned": {"scanned": [1, 4, 12], "kept": [1, 4, 10]}}
    (run / "select" / "selection_stats.json").write_text(json.dumps(stats))
    for name in ("sft", "dpo"):
        (run / name).mkdir()
        history = [{"step": s, "loss": 2.0 / s} for s in (1, 2, 3)] + [{"step": 3, "train_runtime": 1.0}]
        (run / name / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (run / "mt_bench").mkdir()
    (run / "mt_bench" / "table.txt").write_text("model  turn 1\ntiny   1.5\n")
    records = [
        {"name": "score", "seconds": 1.5, "summary": {"in": 30, "scored": 30, "path": "x"}, "reused": False},
        {"name": "select", "seconds": 0.1, "summary": {"selected": 10, "rejected_similar": 2}, "reused": True},
    ]
    summary = stage_report(run / "report", run, records)
    text = (run / "report" / "report.md").read_text()
    assert summary["figures"] == 3
    for png in ("score_histograms.png", "selection_curve.png", "loss_curves.png"):
        assert (run / "report" / png).stat().st_size > 1000 and f"]({png})" in text
    assert "| score | ran | 1.5 | in=30, scored=30 |" in text and "| select | reused |" in text
    assert "tiny   1.5" in text, "the evaluation table is included"


def test_demo_pool_and_tokenize_stages(tmp_path, tiny_mistral):
    from deita_train.demo import stage_pool, stage_tokenize

    pool = stage_pool(tmp_path)
    assert pool["n_in"] == pool["n_kept"] + pool["n_rejected"] and pool["n_rejected"] == 4
    counts = stage_tokenize(tmp_path, tmp_path / "pool.jsonl", tiny_mistral, max_length=64)
    assert counts["samples"] == pool["n_kept"] and counts["truncated"] > 0
    assert 0 < counts["supervised_tokens"] < counts["tokens"]
    sample = (tmp_path / "masked_sample.txt").read_text()
    assert "ASSISTANT:[[" in sample and sample.endswith("]]"), (
        "at 64 tokens the reply is cut: its head stays supervised"
    )


def test_report_command_reads_the_pipelines_stage_records(tmp_path):
    from deita_train.report import main

    run = tmp_path / "pipeline"
    for i, name in enumerate(("pool", "sft")):
        (run / name).mkdir(parents=True)
        rec = {"name": name, "stamp": "x", "seconds": 1.0 + i, "summary": {"n": 10 * (i + 1)}, "reused": False}
        (run / name / "stage.json").write_text(json.dumps(rec))
    state = tmp_path / "trainer_state.json"
    state.write_text(json.dumps({"log_history": [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}]}))
    result = main(["--run_dir", str(run), "--out", str(tmp_path / "report"), "--trainer_state", f"SFT={state}"])
    text = (tmp_path / "report" / "report.md").read_text()
    assert result["figures"] == 1 and result["loss"]["SFT"] == {"first_loss": 1.0, "last_loss": 0.5, "steps": 2}
    assert "| pool | ran | 1.0 | n=10 |" in text and "| sft | ran | 2.0 | n=20 |" in text
