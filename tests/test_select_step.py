"""The selection step: join by id, prefixes, rejects, stats, cards, explanations, and a real-text pool."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deita_train.config import parse_config
from deita_train.embedding import EmbedConfig, embed_pool, load_embeddings, save_embeddings
from deita_train.jsonl import read_jsonl, write_json, write_jsonl
from deita_train.select_step import (
    JoinError,
    SelectConfig,
    budget_label,
    explain,
    explain_many,
    join_by_id,
    run_selection,
)
from deita_train.selection import combined_scores, plain_select
from deita_train.sharded import DistInfo


ROOT = Path(__file__).resolve().parents[1]
SCORERS = {
    "complexity_scorer": "hkust-nlp/deita-complexity-scorer",
    "quality_scorer": "hkust-nlp/deita-quality-scorer",
}
N = 60


def _records(rng: random.Random) -> list[dict]:
    rows = []
    for i in range(N):
        turns = rng.randint(1, 3)
        conv = []
        for t in range(turns):
            conv += [{"from": "human", "value": f"question {i}.{t}"}, {"from": "gpt", "value": f"answer {i}.{t}"}]
        rows.append(
            {
                "id": f"r{i:03d}",
                "conversations": conv,
                "source": "pool-a" if i % 2 else "pool-b",
                "complexity_scores": [round(rng.uniform(1, 6), 3) for _ in range(turns)],
                "quality_scores": [round(rng.uniform(1, 6), 3) for _ in range(turns)],
            }
        )
    rows[7]["quality_scores"] = rows[7]["quality_scores"] + [3.0]  # one score too many
    del rows[11]["complexity_scores"]
    rows[13]["complexity_scores"] = [float("nan")] * len(rows[13]["quality_scores"])
    return rows


def _write_case(root: Path, seed: int = 0) -> tuple[list[dict], dict[str, np.ndarray]]:
    """A scored pool (with 3 bad-score records and 1 broken conversation) and embeddings in shuffled row order."""
    rng = random.Random(seed)
    rows = _records(rng)
    gen = np.random.default_rng(seed)
    vec = gen.normal(size=(N, 8))
    vec[30:] = vec[:30] + 0.05 * gen.normal(size=(30, 8))  # planted near-duplicates: half the pool
    by_id = {r["id"]: vec[i] for i, r in enumerate(rows)}
    broken = {"id": "broken", "conversations": [{"from": "gpt", "value": "no question"}]}
    write_jsonl(root / "scored.jsonl", rows[:30] + [broken] + rows[30:])
    perm = gen.permutation(N)
    save_embeddings(root / "emb", [rows[i]["id"] for i in perm], vec[perm].astype(np.float16))
    return rows, by_id


def _config(root: Path, **overrides) -> SelectConfig:
    args = {
        "scored_path": str(root / "scored.jsonl"),
        "embeddings_dir": str(root / "emb"),
        "output_dir": str(root / "out"),
        "budgets": [8, 20],
        "threshold": 0.9,
        **SCORERS,
    }
    args.update(overrides)
    return SelectConfig(**args)


@pytest.fixture
def case(tmp_path):
    rows, vecs = _write_case(tmp_path)
    return tmp_path, rows, vecs


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_outputs_are_prefixes_in_selection_order_matching_the_reference_rule(case):
    root, rows, vecs = case
    counts = run_selection(_config(root))
    small, large = (
        read_jsonl(root / "out" / "deita-8" / "deita-8.jsonl"),
        read_jsonl(root / "out" / "deita-20" / "deita-20.jsonl"),
    )
    assert len(small) == 8 and len(large) == 20 and large[:8] == small
    assert [r["deita_rank"] for r in large] == list(range(1, 21))
    scores = [r["deita_score"] for r in large]
    assert scores == sorted(scores, reverse=True)
    assert large[0]["conversations"] and large[0]["source"] and "complexity_scores" in large[0]  # carried through

    good = [r for r in rows if r["id"] not in ("r007", "r011", "r013")]
    ref_scores = combined_scores(good)
    ref = plain_select(ref_scores, np.stack([vecs[r["id"]].astype(np.float16) for r in good]), 20, 0.9)
    assert [r["id"] for r in large] == [good[i]["id"] for i in ref]
    np.testing.assert_allclose(scores, ref_scores[ref])
    assert counts["in"] == N + 1 and counts["rejected"] == 4 and counts["selected"] == 20
    assert counts["in"] == counts["selected"] + counts["not_selected"] + counts["rejected"]
    assert counts["scanned"] == counts["selected"] + counts["rejected_similar"] and counts["rejected_similar"] > 0


def test_rows_are_joined_by_id_not_position(case, tmp_path_factory):
    root, rows, vecs = case
    run_selection(_config(root))
    other = tmp_path_factory.mktemp("sorted")
    write_jsonl(other / "scored.jsonl", read_jsonl(root / "scored.jsonl"))
    ids = sorted(vecs)
    save_embeddings(other / "emb", ids, np.stack([vecs[i] for i in ids]).astype(np.float16))
    run_selection(_config(other))
    first = [r["id"] for r in read_jsonl(root / "out" / "deita-20" / "deita-20.jsonl")]
    assert [r["id"] for r in read_jsonl(other / "out" / "deita-20" / "deita-20.jsonl")] == first


def test_join_refuses_mismatched_or_duplicate_ids():
    assert join_by_id(["a", "b"], ["b", "c", "a"], allow_extra_embeddings=True).tolist() == [2, 0]
    with pytest.raises(JoinError, match=r"1 of 2 scored id\(s\) have no embedding: 'b'"):
        join_by_id(["a", "b"], ["a"])
    with pytest.raises(JoinError, match=r"2 of 3 embedded id\(s\) are not in the scored pool: 'x', 'y'"):
        join_by_id(["a"], ["x", "a", "y"])
    with pytest.raises(JoinError, match=r"1 duplicate id\(s\) in the embeddings: 'a'"):
        join_by_id(["a"], ["a", "a"])
    many = [f"id{i}" for i in range(12)]
    with pytest.raises(JoinError, match=r"12 of 12 scored id\(s\) have no embedding: 'id0', .*'id4', \.\.\."):
        join_by_id(many, [])


def test_a_mismatched_embedding_dir_stops_the_step_with_counts(case):
    root, rows, vecs = case
    ids = [r["id"] for r in rows][:-5]
    save_embeddings(root / "emb", ids, np.stack([vecs[i] for i in ids]).astype(np.float16))
    with pytest.raises(JoinError, match=r"5 of 60 scored id\(s\) have no embedding: 'r055'"):
        run_selection(_config(root))
    assert not (root / "out" / "manifest.json").exists()


def test_duplicate_ids_in_the_scored_pool_are_refused(case):
    root, rows, _ = case
    write_jsonl(root / "scored.jsonl", rows + [rows[3]])
    with pytest.raises(JoinError, match=r"1 duplicate id\(s\) in .*scored.jsonl: 'r003'"):
        run_selection(_config(root))


def test_bad_scores_are_rejected_with_reasons(case):
    root, _, _ = case
    run_selection(_config(root))
    rejects = {r["id"]: r for r in read_jsonl(root / "out" / "rejects.jsonl")}
    assert set(rejects) == {"broken", "r007", "r011", "r013"}
    assert rejects["broken"]["stage"] == "load" and "human" in rejects["broken"]["reason"]
    assert "quality scores (one per turn each)" in rejects["r007"]["reason"]
    assert "missing 'complexity_scores'" in rejects["r011"]["reason"]
    assert "finite" in rejects["r013"]["reason"]
    manifest = json.loads((root / "out" / "manifest.json").read_text())
    c = manifest["counts"]
    assert c["in"] == c["selected"] + c["not_selected"] + c["rejected"] and c["rejected"] == 4


def test_explain_says_why_for_every_kind_of_record(case):
    root, _, vecs = case
    cfg = _config(root, budgets=[5, 10])
    run_selection(cfg)
    trace = read_jsonl(root / "out" / "selection_trace.jsonl")
    by_status = {}
    for e in trace:
        by_status.setdefault(e["status"], e)
    assert set(by_status) == {"selected", "rejected_similar", "not_reached", "rejected"}
    assert len(trace) == N + 1

    first = explain(root / "out", trace[0]["id"])
    assert first["deita_rank"] == 1 and "the first candidate is always kept" in first["message"]
    sel = next(e for e in trace if e["status"] == "selected" and e["deita_rank"] == 7)
    msg = explain(root / "out", sel["id"])["message"]
    assert (
        "selected at deita rank 7" in msg
        and "in deita-10" in msg
        and "deita-5" not in msg
        and "<= threshold 0.9" in msg
    )

    rej = explain(root / "out", by_status["rejected_similar"]["id"])
    assert rej["max_sim"] > 0.9 and f"to kept {rej['nearest_kept_id']}" in rej["message"]
    cos = float(_unit(vecs[rej["id"]].astype(np.float16)) @ _unit(vecs[rej["nearest_kept_id"]].astype(np.float16)))
    assert cos == pytest.approx(rej["max_sim"], abs=1e-5)
    kept_before = {e["id"] for e in trace if e["status"] == "selected" and e["scan_position"] < rej["scan_position"]}
    assert rej["nearest_kept_id"] in kept_before

    late = explain(root / "out", by_status["not_reached"]["id"])
    assert "never examined" in late["message"] and "(10) filled after" in late["message"]
    assert late["score_rank"] > max(e.get("scan_position", 0) for e in trace)

    bad = explain_many(root / "out", ["r011", "broken", "nope"])
    assert "rejected before selection (scores)" in bad[0]["message"]
    assert "rejected before selection (load)" in bad[1]["message"]
    assert bad[2]["status"] == "unknown" and "not in the scored pool" in bad[2]["message"]


def test_stats_histograms_curve_manifests_and_cards(case):
    from huggingface_hub import DatasetCard

    root, _, _ = case
    counts = run_selection(_config(root, histogram_bins=5))
    stats = json.loads((root / "out" / "selection_stats.json").read_text())
    assert stats["counts"] == counts
    curve = stats["kept_vs_scanned"]
    assert curve["kept"][-1] == 20 and curve["scanned"][-1] == counts["scanned"]
    assert all(np.diff(curve["scanned"]) > 0) and all(s >= k for s, k in zip(curve["scanned"], curve["kept"]))
    hist = stats["outputs"]["deita-8"]["score_histogram"]
    assert sum(hist["pool"]) == N - 3 and sum(hist["selected"]) == 8 and len(hist["bins"]) == 6

    card = DatasetCard.load(root / "out" / "deita-8" / "README.md")
    assert card.data.pretty_name == "deita-8"
    assert card.data.configs[0]["data_files"][0]["path"] == "deita-8.jsonl"
    meta = card.data.to_dict()["deita"]  # the selection's facts as YAML metadata, not only as prose
    assert (meta["threshold"], meta["budget"], meta["score_mode"]) == (0.9, 8, "sum_product")
    assert meta["scorers"]["quality"] == "hkust-nlp/deita-quality-scorer" and meta["embedder"]
    assert meta["counts"]["selected"] == 8 and meta["source_pools"] and len(meta["score_histogram"]["bins"]) > 1
    assert "<= 0.9" in card.text and "pool-a" in card.text and "hkust-nlp/deita-quality-scorer" in card.text
    out_manifest = json.loads((root / "out" / "deita-8" / "manifest.json").read_text())
    assert out_manifest["config"]["budget"] == 8 and out_manifest["counts"]["selected"] == 8
    assert out_manifest["config"]["embedder"] and out_manifest["config"]["threshold"] == 0.9
    assert (
        out_manifest["counts"]["scanned"]
        == out_manifest["counts"]["selected"] + out_manifest["counts"]["rejected_similar"]
    )


def test_a_budget_larger_than_the_pool_keeps_what_there_is(case):
    root, _, _ = case
    counts = run_selection(_config(root, budgets=[1000], threshold=1.0))
    assert counts["selected"] == N - 3 and counts["scanned"] == N - 3 and counts["not_reached"] == 0
    assert budget_label(6000) == "6k" and budget_label(10000) == "10k" and budget_label(1500) == "1500"


def test_scorer_ids_come_from_the_scoring_manifest_or_the_step_stops(case):
    root, _, _ = case
    with pytest.raises(ValueError, match="complexity_scorer, quality_scorer"):
        run_selection(_config(root, complexity_scorer=None, quality_scorer=None))
    write_json(
        root / "manifest.json",
        {"step": "score", "scorer": {"complexity": {"model": "c/x"}, "quality": {"model": "q/y"}}},
    )
    run_selection(_config(root, complexity_scorer=None, quality_scorer=None))
    manifest = json.loads((root / "out" / "deita-8" / "manifest.json").read_text())
    assert manifest["config"]["complexity_scorer"] == "c/x" and manifest["config"]["quality_scorer"] == "q/y"


def _select_script():
    spec = importlib.util.spec_from_file_location("data_prep_select", ROOT / "data_prep" / "select.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_explains_from_the_stored_selection_when_it_is_current(case, capsys):
    root, _, _ = case
    main = _select_script().main
    base = ["--scored_path", str(root / "scored.jsonl"), "--embeddings_dir", str(root / "emb")]
    base += ["--output_dir", str(root / "out"), "--budgets", "8", "20"]
    base += [x for k, v in SCORERS.items() for x in (f"--{k}", v)]
    first = main(base + ["--explain", "r000", "--explain", "r011", "nope"])
    assert "counts" in first and [e["id"] for e in first["explanations"]] == ["r000", "r011", "nope"]
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 3 and printed[1].startswith("r011: rejected before selection")

    stamp = (root / "out" / "manifest.json").stat().st_mtime_ns
    again = main(base + ["--explain", "r000"])
    assert "counts" not in again and (root / "out" / "manifest.json").stat().st_mtime_ns == stamp
    assert again["explanations"][0] == first["explanations"][0]
    changed = main(base + ["--threshold", "0.8", "--explain", "r000"])  # other settings: selects again
    assert (
        "counts" in changed and json.loads((root / "out" / "manifest.json").read_text())["config"]["threshold"] == 0.8
    )


def test_the_script_does_not_shadow_the_standard_librarys_select():
    code = "import sys; sys.path.insert(0, 'data_prep'); import select, subprocess; print(hasattr(select, 'poll'))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.strip() == "True", run.stderr[-2000:]


@pytest.mark.parametrize("recipe", sorted((ROOT / "recipes" / "select").glob("*.yaml")), ids=lambda p: p.name)
def test_select_recipes_parse(recipe):
    (config,) = parse_config(SelectConfig, args=["--config", str(recipe)])
    assert config.budgets and 0 < config.threshold <= 1


def test_the_released_recipe_is_deita_6k_and_10k():
    (config,) = parse_config(
        SelectConfig, args=["--config", str(ROOT / "recipes" / "select" / "deita-mistral-7b.yaml")]
    )
    assert config.budgets == [6000, 10000] and config.threshold == 0.9 and config.score_mode == "sum_product"
    assert config.embedder == "mistralai/Mistral-7B-v0.1"


# ----------------------------------------------------------------------------------------------
# Real text: the 805 AlpacaEval instructions, each with two reference answers
# ----------------------------------------------------------------------------------------------


def _alpaca_pool(shared: Path, path: Path) -> int:
    rows = []
    for tag, name in (
        ("davinci003", "reference_text_davinci_003_v1.json"),
        ("gpt4t", "reference_gpt4_1106_preview_v2.json"),
    ):
        for i, r in enumerate(json.loads((shared / "alpaca_eval" / name).read_text())):
            rng = random.Random(f"{tag}-{i}")
            rows.append(
                {
                    "id": f"ae-{i:03d}-{tag}",
                    "conversations": [
                        {"from": "human", "value": r["instruction"]},
                        {"from": "gpt", "value": r["output"]},
                    ],
                    "source": f"alpaca_eval:{tag}",
                    "complexity_scores": [round(rng.uniform(1, 6), 4)],
                    "quality_scores": [round(rng.uniform(1, 6), 4)],
                }
            )
    write_jsonl(path, rows)
    return len(rows)


def test_real_text_pool_selection_obeys_the_threshold(shared_data, tiny_mistral, tmp_path):
    """1,610 real records (2 have empty answers and are rejected), tiny embedder, the rule checked pair by pair.

    The tiny embedder has random weights, so its vectors crowd together (pairwise cosine mostly
    0.94-0.99); tau = 0.975 puts the threshold inside that spread, so many candidates are kept and
    many rejected, which is what the check needs. The rule does not depend on what the vectors mean.
    """
    assert _alpaca_pool(shared_data, tmp_path / "scored.jsonl") == 1610
    emb_counts = embed_pool(
        EmbedConfig(
            input_path=str(tmp_path / "scored.jsonl"),
            output_dir=str(tmp_path / "emb"),
            model_name_or_path=str(tiny_mistral),
            chunk_size=2048,
            batch_size=8,
            max_tokens_per_batch=8192,
        ),
        dist=DistInfo(0, 1),
    )
    assert emb_counts["in"] == 1610 and emb_counts["rejected"] == 2 and emb_counts["embedded"] == 1608
    thr = 0.975
    counts = run_selection(_config(tmp_path, budgets=[50, 100], threshold=thr))
    assert counts["in"] == 1610 and counts["rejected"] == 2 and counts["selected"] == 100
    assert counts["rejected_similar"] > 100

    ids, matrix = load_embeddings(tmp_path / "emb")
    unit = _unit(matrix)  # the float16 embeddings as stored, normalised in float32
    row = {x: i for i, x in enumerate(ids)}
    trace = read_jsonl(tmp_path / "out" / "selection_trace.jsonl")
    scanned = [e for e in trace if e.get("scan_position")]
    assert len(scanned) == counts["scanned"]
    kept = [row[e["id"]] for e in scanned if e["status"] == "selected"]
    sims = unit[kept] @ unit[kept].T
    np.fill_diagonal(sims, -1)
    assert sims.max() <= thr + 1e-6  # no two kept rows are more similar than the threshold
    kept_so_far: list[int] = []
    for e in scanned:
        r = row[e["id"]]
        if e["status"] == "rejected_similar":
            best = (unit[kept_so_far] @ unit[r]).max()
            assert best > thr - 1e-6 and e["max_sim"] > thr  # a kept row is too similar
            assert float(unit[row[e["nearest_kept_id"]]] @ unit[r]) > thr - 1e-6
        else:
            kept_so_far.append(r)
    top = read_jsonl(tmp_path / "out" / "deita-100" / "deita-100.jsonl")
    assert read_jsonl(tmp_path / "out" / "deita-50" / "deita-50.jsonl") == top[:50]
