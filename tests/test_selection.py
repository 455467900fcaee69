"""Selection: the blocked `select` must equal the plain one-at-a-time loop on any input."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deita_train import selection
from deita_train.selection import (
    combined_scores,
    plain_select,
    plain_select_with_stats,
    score_order,
    select,
    select_with_stats,
)


def _shared_data() -> Path:
    env = os.environ.get("DEITA_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _unit(pool: np.ndarray) -> np.ndarray:
    """The float32 unit vectors the selection decides on."""
    return selection._normalise_rows(pool, selection._row_norms(pool))


def _exact_sim(u: np.ndarray, i: int, j: int) -> float:
    return math.fsum((u[i].astype(np.float64) * u[j].astype(np.float64)).tolist())


def make_pool(
    seed: int,
    n: int,
    d: int,
    *,
    centres: int = 3,
    noise: float = 0.3,
    dup: float = 0.0,
    zero: float = 0.0,
    neg: float = 0.0,
    dtype: str = "float64",
) -> np.ndarray:
    """Clustered rows with planted exact, scaled and near duplicates, zero rows and negations."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    x = c[rng.integers(0, centres, n)] + noise * rng.normal(size=(n, d))
    for i in range(1, n):
        r = rng.random()
        if r < dup:
            src = int(rng.integers(0, i))
            kind = rng.integers(0, 3)
            x[i] = (
                x[src]
                if kind == 0
                else (x[src] * rng.uniform(0.1, 10) if kind == 1 else x[src] + 1e-4 * rng.normal(size=d))
            )
        elif r < dup + neg:
            x[i] = -x[int(rng.integers(0, i))]
    x[rng.random(n) < zero] = 0.0
    return x.astype(dtype)


def assert_same(fast: selection.SelectionStats, ref: selection.SelectionStats) -> None:
    assert fast.indices.dtype == np.int64
    np.testing.assert_array_equal(fast.indices, ref.indices)
    assert fast.scanned == ref.scanned
    assert fast.rejected_similar == ref.rejected_similar
    np.testing.assert_array_equal(fast.candidates, ref.candidates)
    np.testing.assert_array_equal(fast.kept, ref.kept)
    np.testing.assert_allclose(fast.max_sim_at_decision, ref.max_sim_at_decision, atol=1e-5, rtol=0)
    for s in (fast, ref):
        # the decision is exactly "max similarity to the kept rows <= threshold"
        np.testing.assert_array_equal(s.max_sim_at_decision <= s.threshold, s.kept)
        assert s.scanned == 0 or s.kept[0]


# ---------------------------------------------------------------------------------------------
# select == plain loop
# ---------------------------------------------------------------------------------------------

THRESHOLDS = [-1.0, -0.5, 0.0, 0.5, 0.9, 0.99, 0.999999, 1.0, 1.0 + 1e-7, 1.5, -math.inf]


@st.composite
def selection_case(draw: st.DrawFn) -> dict:
    n = draw(st.integers(1, 40))
    d = draw(st.integers(1, 9))
    pool = make_pool(
        draw(st.integers(0, 2**32 - 1)),
        n,
        d,
        centres=draw(st.integers(1, 5)),
        noise=draw(st.sampled_from([0.0, 1e-3, 0.05, 0.3, 1.0])),
        dup=draw(st.sampled_from([0.0, 0.2, 0.5])),
        zero=draw(st.sampled_from([0.0, 0.1, 0.4])),
        neg=draw(st.sampled_from([0.0, 0.1])),
        dtype=draw(st.sampled_from(["float64", "float32", "float16"])),
    )
    score_kind = draw(st.sampled_from(["continuous", "ties", "equal"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scores = {"continuous": rng.normal(size=n), "ties": rng.integers(0, 3, n).astype(float), "equal": np.ones(n)}[
        score_kind
    ]
    if n >= 2 and draw(st.booleans()):
        # threshold exactly at (or one ulp below) a real pair's similarity: ties must go the same way
        u = _unit(pool)
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        threshold = _exact_sim(u, i, j)
        if draw(st.booleans()):
            threshold = math.nextafter(threshold, -math.inf)
    else:
        threshold = draw(st.sampled_from(THRESHOLDS) | st.floats(-1.1, 1.1))
    budget = draw(st.sampled_from([None, -1, 0, 1, 2, 3, n, n + 7]) | st.integers(0, n))
    block_size = draw(st.sampled_from([1, 2, 3, 5, 8, 64, selection.DEFAULT_BLOCK_SIZE]))
    return {"scores": scores, "pool": pool, "budget": budget, "threshold": threshold, "block_size": block_size}


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(selection_case())
def test_select_equals_plain_loop(case: dict) -> None:
    ref = plain_select_with_stats(case["scores"], case["pool"], case["budget"], case["threshold"])
    fast = select_with_stats(
        case["scores"], case["pool"], case["budget"], case["threshold"], block_size=case["block_size"], device="cpu"
    )
    assert_same(fast, ref)
    np.testing.assert_array_equal(
        select(
            case["scores"],
            case["pool"],
            case["budget"],
            case["threshold"],
            block_size=case["block_size"],
            device="cpu",
        ),
        ref.indices,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_adaptive_blocks_on_a_larger_pool(seed: int) -> None:
    """Default block sizes, many blocks, many rejections and in-block conflicts."""
    pool = make_pool(seed, 2500, 24, centres=120, noise=0.25, dup=0.1, zero=0.01).astype(np.float32)
    scores = np.random.default_rng(seed).integers(0, 50, 2500).astype(float)
    for budget, threshold in [(700, 0.9), (None, 0.95), (2500, 0.5)]:
        assert_same(
            select_with_stats(scores, pool, budget, threshold, device="cpu"),
            plain_select_with_stats(scores, pool, budget, threshold),
        )


def test_kept_set_screened_in_column_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Huge kept sets are screened in column chunks (running max); the result must not change."""
    pool = make_pool(9, 1200, 16, centres=60, noise=0.3, dup=0.2, zero=0.01).astype(np.float32)
    scores = np.random.default_rng(9).integers(0, 5, 1200).astype(float)
    expected = plain_select_with_stats(scores, pool, None, 0.9)
    monkeypatch.setattr(selection, "_SCREEN_ELEMENTS", 300)
    assert_same(select_with_stats(scores, pool, None, 0.9, block_size=64, device="cpu"), expected)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_threshold_at_an_exact_pair_similarity_in_high_dimension(dtype: str) -> None:
    """At d=256 the float32 screen is ~3e-5 wide; ties at the threshold must still match the loop."""
    pool = make_pool(8, 400, 256, centres=30, noise=0.3, dup=0.2, dtype=dtype)
    scores = np.random.default_rng(8).random(400)
    u = _unit(pool)
    probe = plain_select_with_stats(scores, pool, 150, 0.9)
    rejected = np.flatnonzero(~probe.kept)[[0, 5, -1]]
    for i, j in zip(probe.candidates[rejected], probe.nearest_kept[rejected]):  # pairs that decided a rejection
        sim = _exact_sim(u, i, j)
        for threshold in (sim, math.nextafter(sim, -math.inf), math.nextafter(sim, math.inf)):
            assert_same(
                select_with_stats(scores, pool, 150, threshold, block_size=37, device="cpu"),
                plain_select_with_stats(scores, pool, 150, threshold),
            )


def test_exact_threshold_tie_is_kept_and_one_ulp_below_is_rejected() -> None:
    pool = np.array([[1.0, 0.2, 0.0], [0.9, 0.3, 0.1], [0.0, 0.0, 1.0]])
    scores = np.array([3.0, 2.0, 1.0])
    sim = _exact_sim(_unit(pool), 0, 1)
    for fn in (plain_select, lambda *a: select(*a, device="cpu")):
        assert fn(scores, pool, None, sim).tolist() == [0, 1, 2]  # sim == threshold: not "> threshold"
        assert fn(scores, pool, None, math.nextafter(sim, -math.inf)).tolist() == [0, 2]


def test_first_is_always_kept_and_budget_edges() -> None:
    pool = make_pool(3, 30, 4, centres=1, noise=0.0, dtype="float32")  # all identical directions
    scores = np.arange(30.0)
    for threshold in (-math.inf, -2.0, -1.0, 0.0, 0.9):
        assert select(scores, pool, None, threshold).tolist() == [29]
    assert select(scores, pool, 0).tolist() == []
    assert select(scores, pool, 1, 2.0).tolist() == [29]
    everything = list(range(29, -1, -1))
    assert select(scores, pool, None, 2.0).tolist() == everything
    assert select(scores, pool, -1, 2.0).tolist() == everything
    assert select(scores, pool, 1000, 2.0).tolist() == everything
    assert select(scores, pool, np.int64(5), 2.0).tolist() == everything[:5]
    stats = select_with_stats(scores, pool, 5, 2.0)
    assert stats.scanned == 5 and stats.rejected_similar == 0
    assert select(np.empty(0), np.empty((0, 4)), 10).tolist() == []


@pytest.mark.parametrize("dtype", ["float32", "float64", "int64"])
def test_tiny_and_huge_rows_normalise_to_the_same_direction(dtype: str) -> None:
    v = np.array([3.0, -4.0, 12.0])
    scales = {
        "float32": [1e-30, 1e-20, 1.0, 1e20, 1e30],
        "float64": [1e-300, 1.0, 1e300],
        "int64": [1, 10**15, 10**17],
    }
    pool = np.array([np.array(v) * s for s in scales[dtype]]).astype(dtype)
    pool = np.vstack([pool, [[1, 0, 0]]]).astype(dtype)
    unit = _unit(pool)
    np.testing.assert_allclose(unit[:-1], np.tile(v / 13.0, (len(pool) - 1, 1)), rtol=1e-6)
    scores = np.arange(len(pool), 0, -1.0)
    assert select(scores, pool, None, 0.99).tolist() == [0, len(pool) - 1]
    assert plain_select(scores, pool, None, 0.99).tolist() == [0, len(pool) - 1]


def test_ties_keep_input_order() -> None:
    np.testing.assert_array_equal(score_order([1.0, 2.0, 1.0, 2.0, 0.5]), [1, 3, 0, 2, 4])
    pool = np.eye(5)
    assert select([1.0, 2.0, 1.0, 2.0, 0.5], pool, None).tolist() == [1, 3, 0, 2, 4]


def test_zero_vectors_have_similarity_zero() -> None:
    pool = np.zeros((6, 3))
    pool[1] = [1.0, 0.0, 0.0]
    pool[3] = [1.0, 0.0, 0.0]  # duplicate of row 1
    scores = -np.arange(6.0)
    assert select(scores, pool, None, 0.9).tolist() == [0, 1, 2, 4, 5]  # zeros never rejected, never reject
    assert select(scores, pool, None, 0.0).tolist() == [0, 1, 2, 4, 5]  # sim 0 is not > 0
    assert select(scores, pool, None, -0.5).tolist() == [0]  # 0 > -0.5: everything is "similar"
    stats = select_with_stats(scores, pool, None, 0.9)
    assert stats.max_sim_at_decision[1] == 0.0 and stats.nearest_kept[3] == 1


def test_stats_explain_every_row() -> None:
    pool = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.0, 1.0]])
    stats = select_with_stats([4.0, 3.0, 2.0, 1.0], pool, 2, 0.9)
    assert stats.indices.tolist() == [0, 2]
    assert stats.scanned == 3 and stats.rejected_similar == 1
    assert stats.kept.tolist() == [True, False, True]
    assert stats.nearest_kept.tolist() == [-1, 0, 0]
    assert stats.max_sim_at_decision.dtype == np.float64 and stats.max_sim_at_decision[0] == -math.inf
    assert "rejected" in stats.explain(1) and "nearest kept row 0" in stats.explain(1)
    assert "kept" in stats.explain(2)
    assert "not examined" in stats.explain(3)


def test_normalisation_does_not_depend_on_the_block() -> None:
    pool = make_pool(5, 50, 33, dtype="float16")
    norms = selection._row_norms(pool)
    whole = selection._normalise_rows(pool, norms)
    rows = np.array([7, 3, 49, 0, 3])
    np.testing.assert_array_equal(selection._load_normalised(pool, rows, norms), whole[rows])
    for i in (0, 17, 49):
        np.testing.assert_array_equal(selection._normalise_rows(pool[i : i + 1], norms[i : i + 1])[0], whole[i])


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32"])
def test_unit_vectors_are_accurate(dtype: str) -> None:
    """Norms are computed in at least float32 (a float16 norm would shift every cosine by ~1e-3)."""
    pool = (make_pool(6, 200, 512, noise=1.0) * (20 if dtype == "int32" else 1)).astype(dtype)
    unit = _unit(pool).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=2e-6)
    exact = pool.astype(np.float64) / np.linalg.norm(pool.astype(np.float64), axis=1, keepdims=True)
    np.testing.assert_allclose(unit @ unit.T, exact @ exact.T, atol=2e-6)


@pytest.mark.parametrize("dim", [8, 40])
def test_float16_memmap_is_read_in_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dim: int) -> None:
    """A float16 memmap selects like the in-memory array, reading only chunks, never the whole pool."""
    data = make_pool(11, 900, dim, centres=40, noise=0.2, dup=0.2, zero=0.02, dtype="float16")
    path = tmp_path / "pool.npy"
    np.save(path, data)
    mm = np.load(path, mmap_mode="r")
    scores = np.random.default_rng(0).random(900)

    reads: list[int] = []

    class Watched(np.memmap):
        def __getitem__(self, key):
            out = super().__getitem__(key)
            if isinstance(out, np.ndarray) and out.ndim == 2:
                reads.append(out.shape[0])
            return out

    watched = mm.view(Watched)
    monkeypatch.setattr(selection, "_CHUNK_ELEMENTS", 64 * dim)  # stream the norms 64 rows at a time
    fast = select_with_stats(scores, watched, 300, 0.9, block_size=128, device="cpu")
    assert reads and max(reads) <= 128  # the pool has 900 rows
    assert_same(fast, plain_select_with_stats(scores, data, 300, 0.9))
    np.testing.assert_array_equal(select(scores, mm, 300, 0.9), fast.indices)


def test_torch_tensor_input() -> None:
    pool = make_pool(2, 60, 6, dup=0.3, dtype="float32")
    scores = np.random.default_rng(2).random(60)
    expected = plain_select(scores, pool, 20, 0.8)
    np.testing.assert_array_equal(select(torch.from_numpy(scores), torch.from_numpy(pool), 20, 0.8), expected)
    assert select(scores, torch.from_numpy(pool).bfloat16(), 20, 0.8).dtype == np.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_plain_loop() -> None:
    pool = make_pool(4, 3000, 64, centres=200, noise=0.25, dup=0.1, zero=0.01, dtype="float16")
    scores = np.random.default_rng(4).random(3000)
    assert_same(
        select_with_stats(scores, pool, 1000, 0.9, device="cuda"), plain_select_with_stats(scores, pool, 1000, 0.9)
    )


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_bad_embeddings_and_arguments_raise() -> None:
    pool = np.ones((5, 3))
    pool[3, 1] = np.nan
    with pytest.raises(ValueError, match="row 3"):
        select(np.arange(5.0), pool, 2)
    pool[3, 1] = np.inf
    with pytest.raises(ValueError, match="row 3"):
        select(np.arange(5.0), pool.astype(np.float16), 2)
    with pytest.raises(ValueError, match="row 2"):
        select([1.0, 2.0, np.nan], np.ones((3, 2)), 2)
    with pytest.raises(ValueError, match="3 scores for 4"):
        select([1.0, 2.0, 3.0], np.ones((4, 2)), 2)
    with pytest.raises(ValueError, match="2-D"):
        select([1.0], np.ones(3), 1)
    for budget in (-2, 1.5, True):
        with pytest.raises(ValueError, match="budget"):
            select([1.0, 2.0], np.ones((2, 2)), budget)
    with pytest.raises(ValueError, match="threshold"):
        select([1.0, 2.0], np.ones((2, 2)), 1, float("nan"))
    with pytest.raises(ValueError, match="block_size"):
        select([1.0, 2.0], np.ones((2, 2)), 1, block_size=0)


# ---------------------------------------------------------------------------------------------
# combined scores
# ---------------------------------------------------------------------------------------------


def test_combined_scores_modes() -> None:
    records = [
        {"id": "a", "complexity_scores": [2.0, 3.0], "quality_scores": [4.0, 5.0]},
        {"id": "b", "complexity_scores": [6], "quality_scores": [1.5]},
    ]
    out = combined_scores(records)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [2 * 4 + 3 * 5, 9.0])
    np.testing.assert_allclose(combined_scores(records, "mean_product"), [2.5 * 4.5, 9.0])
    np.testing.assert_allclose(combined_scores(records, "complexity"), [5.0, 6.0])
    np.testing.assert_allclose(combined_scores(records, "quality"), [9.0, 1.5])
    np.testing.assert_allclose(combined_scores([([1.0, 2.0], [3.0, 4.0])]), [11.0])
    np.testing.assert_allclose(combined_scores([{"complexity_scores": np.array([2.0])}], "complexity"), [2.0])
    assert combined_scores([]).shape == (0,)


@pytest.mark.parametrize(
    ("record", "mode", "message"),
    [
        ({"id": "x1", "quality_scores": [1.0]}, "sum_product", r"record 1 \(id='x1'\).*missing 'complexity_scores'"),
        ({"id": "x1", "complexity_scores": [1.0]}, "quality", "missing 'quality_scores'"),
        (
            {"id": "x1", "complexity_scores": [1.0, 2.0], "quality_scores": [1.0]},
            "sum_product",
            "2 complexity.*1 quality",
        ),
        ({"id": "x1", "complexity_scores": [], "quality_scores": []}, "mean_product", "empty"),
        (
            {"id": "x1", "complexity_scores": [1.0, float("nan")], "quality_scores": [1, 2]},
            "sum_product",
            r"\[1\].*nan",
        ),
        ({"id": "x1", "complexity_scores": [1.0], "quality_scores": [float("inf")]}, "quality", "finite"),
    ],
)
def test_combined_scores_errors_name_the_record(record: dict, mode: str, message: str) -> None:
    good = {"id": "ok", "complexity_scores": [1.0], "quality_scores": [1.0]}
    with pytest.raises(ValueError, match=message):
        combined_scores([good, record], mode)


@pytest.mark.parametrize(("field", "message"), [(["3"], "not a number"), ([True], "not a number"), (3.0, "list")])
def test_combined_scores_type_errors_name_the_record(field: object, message: str) -> None:
    with pytest.raises(TypeError, match=rf"record 0 \(id='x1'\).*{message}"):
        combined_scores([{"id": "x1", "complexity_scores": field, "quality_scores": [1.0]}])


def test_combined_scores_rejects_unknown_mode_and_shapes() -> None:
    with pytest.raises(ValueError, match="mode"):
        combined_scores([], "product")
    with pytest.raises(TypeError, match="record 0"):
        combined_scores(["not a record"])
    with pytest.raises(TypeError, match="not one mapping"):
        combined_scores({"complexity_scores": [1.0], "quality_scores": [1.0]})


# ---------------------------------------------------------------------------------------------
# real text: AlpacaEval's 805 instructions x 2 reference answers
# ---------------------------------------------------------------------------------------------


def hashed_embedding(text: str, dim: int = 512) -> np.ndarray:
    """Signed hashed bag of word unigrams and bigrams: cheap, deterministic, similar texts -> high cosine."""
    toks = re.findall(r"[a-z0-9']+", text.lower())
    v = np.zeros(dim, dtype=np.float32)
    for feat in toks + [f"{a} {b}" for a, b in itertools.pairwise(toks)]:
        h = zlib.crc32(feat.encode())
        v[h % dim] += 1.0 if h >> 31 else -1.0
    return v


def test_real_text_duplicates_behave_as_the_threshold_says() -> None:
    base = _shared_data() / "alpaca_eval"
    files = [base / "reference_text_davinci_003_v1.json", base / "reference_gpt4_1106_preview_v2.json"]
    if not all(f.exists() for f in files):
        pytest.skip(f"shared data not found under {base}")
    first, second = (json.loads(f.read_text()) for f in files)
    assert len(first) == len(second) == 805
    assert [r["instruction"] for r in first] == [r["instruction"] for r in second]
    records = first + second  # row i and row i + 805 answer the same instruction
    pool = np.stack([hashed_embedding(r["instruction"] + "\n" + r["output"]) for r in records])
    scores = np.random.default_rng(0).random(len(records))
    threshold = 0.6

    stats = select_with_stats(scores, pool, None, threshold, device="cpu")
    assert_same(stats, plain_select_with_stats(scores, pool, None, threshold))
    assert stats.scanned == 1610 and 0 < stats.rejected_similar < 1610

    u = _unit(pool).astype(np.float64)
    sim = u @ u.T
    tol = 1e-9
    kept = stats.indices
    kept_block = sim[np.ix_(kept, kept)]
    np.fill_diagonal(kept_block, -np.inf)
    assert kept_block.max() <= threshold + tol  # every kept pair is diverse enough
    rank = {int(r): k for k, r in enumerate(stats.candidates)}
    kept_rank = np.array([rank[int(r)] for r in kept])
    for k in np.flatnonzero(~stats.kept):  # every rejected row is too close to a row kept before it
        row = stats.candidates[k]
        before = kept[kept_rank < k]
        assert sim[row, before].max() > threshold - tol
        assert stats.nearest_kept[k] in before and sim[row, stats.nearest_kept[k]] > threshold - tol

    kept_set = set(kept.tolist())
    sib = np.array([sim[i, i + 805] for i in range(805)])
    both = np.array([i in kept_set and i + 805 in kept_set for i in range(805)])
    assert np.all(sib[both] <= threshold + tol)  # both answers kept only when they are not near-duplicates
    assert both.any() and (~both & (sib > threshold)).any()  # the data has both cases
