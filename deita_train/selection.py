"""Score-first, diversity-aware selection (Deita, "1c. Filter"), exact and fast.

The rule (written out once as code in `plain_select_with_stats`, the slow reference loop):

* visit the pool best score first (`score_order`: stable, ties keep input order);
* the first candidate is always kept;
* a candidate is kept only if its cosine similarity to EVERY row kept so far is <= threshold;
* stop as soon as `budget` rows are kept (`budget=None` or `-1`: no limit).

`select` gives exactly the indices of that loop on any input, but compares candidates against the
kept set in blocks (one matmul per block, kept rows in one preallocated matrix, on the GPU when
there is one) and resolves conflicts inside a block with a small precomputed block-vs-block matrix.

Numerics (why two paths can agree bit for bit): every row is L2-normalised once to float32 (norms
in one streaming pass, rows block by block as they are visited, never the whole pool at once;
float64 only for float64 input or extreme magnitudes). The similarity that
decides is the float64 rounding of the exact dot product of two such float32 vectors; products of
float32 numbers are exact in float64, and the few sums that land within rounding error of the
threshold are recomputed with `math.fsum`, so the decision does not depend on summation order or
matmul shape. The blocked path screens with a float32 matmul and only recomputes pairs whose
float32 value lies within a proven error bound of the threshold. Against pure float64 math on the
raw vectors, decisions can differ only where |sim - threshold| < ~1e-6 (float32 normalisation).

Zero vectors: a zero-norm embedding has cosine similarity 0 to everything, so with a threshold >= 0
it is never rejected for similarity and never causes a rejection. NaN or inf in an embedding, or
NaN in a score, raises ValueError naming the row.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch


__all__ = [
    "SCORE_MODES",
    "SelectionStats",
    "combined_scores",
    "plain_select",
    "plain_select_with_stats",
    "score_order",
    "select",
    "select_with_stats",
]

SCORE_MODES = ("sum_product", "mean_product", "complexity", "quality")

DEFAULT_BLOCK_SIZE = 4096

# Rows read per chunk when streaming over the pool (norms, normalisation): bounds float64 temporaries.
_CHUNK_ELEMENTS = 1 << 22
# Largest block x kept similarity matrix held at once (floats): 256 MB.
_SCREEN_ELEMENTS = 1 << 26


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------


def _record_label(index: int, record_id: object) -> str:
    return f"record {index}" + (f" (id={record_id!r})" if record_id is not None else "")


def _turn_scores(values: object, field: str, label: str) -> np.ndarray:
    """Validate one per-turn score list: a non-empty 1-D sequence of finite real numbers."""
    if values is None:
        raise ValueError(f"{label}: missing {field!r}")
    if isinstance(values, np.ndarray):
        if values.ndim != 1 or values.dtype.kind not in "iuf":
            raise TypeError(
                f"{label}: {field!r} must be a 1-D list of numbers, got array {values.dtype}{values.shape}"
            )
        arr = values.astype(np.float64)
    elif isinstance(values, (list, tuple)):
        for turn, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"{label}: {field}[{turn}] is {v!r}, not a number")
        arr = np.asarray(values, dtype=np.float64)
    else:
        raise TypeError(f"{label}: {field!r} must be a list of per-turn numbers, got {type(values).__name__}")
    if arr.size == 0:
        raise ValueError(f"{label}: {field!r} is empty")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ValueError(f"{label}: {field}[{int(bad[0])}] is {arr[bad[0]]!r} (scores must be finite)")
    return arr


def combined_scores(records_or_lists: Iterable[object], mode: str = "sum_product") -> np.ndarray:
    """Per-record selection score from per-turn `complexity_scores` and `quality_scores`.

    `records_or_lists` yields either records (mappings with "complexity_scores", "quality_scores"
    and optionally "id") or `(complexity_scores, quality_scores)` pairs. Modes:

    * "sum_product" (the original): sum over turns of c_t * q_t; it grows with the number of turns,
      which is why the original favours long multi-turn dialogues;
    * "mean_product": mean(c) * mean(q), length-neutral;
    * "complexity": sum(c) (quality lists are not needed); "quality": sum(q) (complexity not needed).

    Never invents a score: a missing, empty or non-finite list, or lists of different lengths,
    raise ValueError naming the record index and id; a value of the wrong type raises TypeError
    naming them.
    """
    if mode not in SCORE_MODES:
        raise ValueError(f"unknown score mode {mode!r}; expected one of {SCORE_MODES}")
    if isinstance(records_or_lists, Mapping):
        raise TypeError("combined_scores takes an iterable of records or (complexity, quality) pairs, not one mapping")
    need_c = mode != "quality"
    need_q = mode != "complexity"
    out: list[float] = []
    for i, item in enumerate(records_or_lists):
        if isinstance(item, Mapping):
            record_id = item.get("id")
            label = _record_label(i, record_id)
            c_raw, q_raw = item.get("complexity_scores"), item.get("quality_scores")
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            label = _record_label(i, None)
            c_raw, q_raw = item
        else:
            raise TypeError(
                f"record {i}: expected a mapping or a (complexity, quality) pair, got {type(item).__name__}"
            )
        c = _turn_scores(c_raw, "complexity_scores", label) if need_c else None
        q = _turn_scores(q_raw, "quality_scores", label) if need_q else None
        if c is not None and q is not None and c.shape != q.shape:
            raise ValueError(f"{label}: {c.size} complexity scores but {q.size} quality scores (one per turn each)")
        if mode == "sum_product":
            out.append(float(np.sum(c * q)))
        elif mode == "mean_product":
            out.append(float(np.mean(c) * np.mean(q)))
        elif mode == "complexity":
            out.append(float(np.sum(c)))
        else:
            out.append(float(np.sum(q)))
    return np.asarray(out, dtype=np.float64)


def _as_scores(scores: npt.ArrayLike | torch.Tensor, n: int | None = None) -> np.ndarray:
    arr = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else scores
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{arr.shape[0]} scores for {n} embedding rows")
    bad = np.flatnonzero(np.isnan(arr))
    if bad.size:
        raise ValueError(f"score of row {int(bad[0])} is NaN")
    return arr


def score_order(scores: npt.ArrayLike | torch.Tensor) -> np.ndarray:
    """Row indices by descending score; stable, so tied rows keep their input order.

    The original sorted with pandas' unstable quicksort (tie order unspecified); a stable order
    makes selection reproducible.
    """
    arr = _as_scores(scores)
    return np.argsort(-arr, kind="stable").astype(np.int64, copy=False)


# ----------------------------------------------------------------------------------------------
# Validation and normalisation shared by the fast path and the reference loop
# ----------------------------------------------------------------------------------------------


def _as_pool(embeddings: npt.ArrayLike | torch.Tensor) -> np.ndarray:
    """A 2-D real array view of the pool; numpy memmaps stay memmaps (nothing is read here)."""
    if isinstance(embeddings, torch.Tensor):
        t = embeddings.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        embeddings = t.cpu().numpy()
    pool = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(embeddings)
    if pool.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (rows x dim), got shape {pool.shape}")
    if pool.dtype.kind not in "fiu":
        raise ValueError(f"embeddings must be real numbers, got dtype {pool.dtype}")
    if pool.shape[1] == 0 and pool.shape[0] > 0:
        raise ValueError("embeddings have dimension 0")
    return pool


def _as_budget(budget: int | None, n: int) -> int:
    if budget is None:
        return n
    try:
        if isinstance(budget, bool):
            raise TypeError
        b = int(budget.__index__())  # type: ignore[union-attr]
    except (AttributeError, TypeError):
        raise ValueError(f"budget must be an int, None or -1, got {budget!r}") from None
    if b == -1:
        return n
    if b < 0:
        raise ValueError(f"budget must be >= 0, None or -1, got {b}")
    return min(b, n)


def _as_threshold(threshold: float) -> float:
    t = float(threshold)
    if math.isnan(t):
        raise ValueError("threshold is NaN")
    return t


def _chunk_rows(dim: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(dim, 1))


def _writable(a: np.ndarray) -> np.ndarray:
    """torch.from_numpy needs a writable array (memmaps opened "r" are not): copy only then."""
    return a if a.flags.writeable and a.flags.c_contiguous else np.array(a, order="C")


def _is_wide(dtype: np.dtype) -> bool:
    """float64 (and wider) rows can overflow a float64 sum of squares; everything else cannot."""
    return dtype.kind == "f" and dtype.itemsize > 4


def _wide_norms(x: np.ndarray) -> np.ndarray:
    """float64 norms that cannot overflow or underflow: rows scaled by their max |x| first (NaN if not finite)."""
    x = np.array(x, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        scale = np.abs(x).max(axis=1)
    scale[~np.isfinite(scale)] = np.nan
    scale[scale == 0] = 1.0
    x /= scale[:, None]
    return scale * np.sqrt(np.einsum("ij,ij->i", x, x))


def _row_norms(pool: np.ndarray) -> np.ndarray:
    """L2 norm of every row (float64 array), streaming over the pool in chunks; raises on NaN/inf.

    One pass over a (possibly memory-mapped) pool; only a chunk is in memory at a time.
    float16/float32/int rows: a float32 norm (torch, multi-threaded; its cascade summation is
    accurate to a few ulp), recomputed in float64 for rows whose squares could overflow or
    underflow float32. float64 rows: float64 norms, scaled by max |x| first. A NaN/inf element
    makes the norm non-finite, which is how bad rows are found.
    """
    n, d = pool.shape
    norms = np.empty(n, dtype=np.float64)
    wide = _is_wide(pool.dtype)
    step = _chunk_rows(d)
    for start in range(0, n, step):
        chunk = pool[start : start + step]
        if wide:
            out = _wide_norms(chunk)
        else:
            x = torch.from_numpy(_writable(chunk) if chunk.dtype.kind == "f" else chunk.astype(np.float32))
            out = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32).numpy().astype(np.float64)
            redo = np.flatnonzero(~np.isfinite(out) | (out < 1e-15) | (out > 1e15))
            if redo.size:
                out[redo] = _wide_norms(chunk[redo])
        bad = np.flatnonzero(~np.isfinite(out))
        if bad.size:
            raise ValueError(f"embeddings row {start + int(bad[0])} contains NaN or inf")
        norms[start : start + step] = out
    return norms


def _normalise_rows(raw: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Rows divided by their norm, as float32 (zero rows stay zero).

    float16/float32/int rows: float32(x) / float32(norm) (float32(x / norm) when the norm is
    outside [1e-15, 1e15]); float64 rows: float32(x / norm). Purely
    elementwise (IEEE division is correctly rounded on every code path), so a row's unit vector
    does not depend on which block it was read with.
    """
    safe = np.where(norms > 0, norms, 1.0)
    x = torch.from_numpy(_writable(raw))
    if _is_wide(raw.dtype):
        return (x / torch.from_numpy(safe)[:, None]).to(torch.float32).numpy()
    out = x.to(torch.float32) / torch.from_numpy(safe.astype(np.float32))[:, None]
    odd = np.flatnonzero((safe < 1e-15) | (safe > 1e15))  # float32(norm) would lose precision
    if odd.size:
        idx = torch.from_numpy(odd)
        out[idx] = (x[idx].to(torch.float64) / torch.from_numpy(safe[odd])[:, None]).to(torch.float32)
    return out.numpy()


def _load_normalised(pool: np.ndarray, rows: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """Read `rows` (in the given order) from the pool, normalised float32.

    A memmap is read in increasing row order (friendlier to the page cache) and then reordered.
    """
    if isinstance(pool, np.memmap):
        srt = np.argsort(rows, kind="stable")
        unit = _normalise_rows(np.asarray(pool[rows[srt]]), norms[rows[srt]])
        out = np.empty_like(unit)
        out[srt] = unit
        return out
    return _normalise_rows(pool[rows], norms[rows])


def _exact_sims(a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """Decision-grade similarities of float32 row pairs (a[i], b[i]); b may broadcast (1, d).

    Products of float32 numbers are exact in float64; a float64 sum is within d*2^-52 of the exact
    dot product for these (norm <= 1) vectors, and sums that close to the threshold are redone with
    `math.fsum` (correctly rounded). So `result > threshold` is the same on every path.
    """
    p = a.astype(np.float64, copy=False) * b.astype(np.float64, copy=False)
    if p.ndim == 1:
        p = p[None, :]
    s = p.sum(axis=1)
    eps = (p.shape[1] + 2) * 2.0**-51
    for i in np.flatnonzero(np.abs(s - threshold) <= eps):
        s[i] = math.fsum(p[i].tolist())
    return s


def _screen_margin(dim: int, device: torch.device) -> float:
    """Proven bound on |float32 matmul similarity - exact| for normalised float32 vectors.

    A float32 dot product of length d errs by at most ~d*2^-24 times sum|a_k b_k| <= 1 in any
    summation order (x2 for safety). If the user allowed TF32/bf16 matmuls, widen accordingly.
    """
    margin = 2.0 * (dim + 2) * 2.0**-24 + 2.0**-20
    precisions = {torch.get_float32_matmul_precision()}
    for owner in (torch.backends, getattr(torch.backends, "mkldnn", None), getattr(torch.backends, "cuda", None)):
        for obj in (owner, getattr(owner, "matmul", None)):
            value = getattr(obj, "fp32_precision", None) if obj is not None else None
            if isinstance(value, str):
                precisions.add(value)
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        precisions.add("tf32")
    if {"medium", "bf16"} & precisions:
        margin = max(margin, 2.0**-5)
    elif {"high", "tf32"} & precisions:
        margin = max(margin, 2.0**-8)
    return margin


def _as_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionStats:
    """What the selection did, enough to explain any row's fate.

    `candidates[k]` is the k-th row visited (score order), for the `scanned` rows examined before
    the budget filled; `kept[k]` says if it was kept, `max_sim_at_decision[k]` is its largest cosine
    similarity to the rows kept before it (-inf for the first row) and `nearest_kept[k]` that row's
    index (-1 if none). A row is kept exactly when `max_sim_at_decision <= threshold`
    (`max_sim_at_decision` is float64 so that this holds bit for bit).
    """

    indices: np.ndarray
    scanned: int
    rejected_similar: int
    candidates: np.ndarray
    kept: np.ndarray
    max_sim_at_decision: np.ndarray
    nearest_kept: np.ndarray
    threshold: float
    budget: int

    def explain(self, row: int) -> str:
        """One line on why pool row `row` was or was not selected."""
        where = np.flatnonzero(self.candidates == row)
        if where.size == 0:
            return f"row {row}: not examined (the budget of {self.budget} filled after {self.scanned} candidates)"
        k = int(where[0])
        sim, near = float(self.max_sim_at_decision[k]), int(self.nearest_kept[k])
        if near < 0:
            return f"row {row}: kept, visited first (rank 0)"
        verdict = "kept" if self.kept[k] else "rejected"
        rel = "<=" if self.kept[k] else ">"
        return (
            f"row {row}: {verdict}, visited at rank {k}; max cosine to kept rows {sim:.6f} {rel} "
            f"threshold {self.threshold} (nearest kept row {near})"
        )


def _empty_stats(threshold: float, budget: int) -> SelectionStats:
    return SelectionStats(
        indices=np.empty(0, dtype=np.int64),
        scanned=0,
        rejected_similar=0,
        candidates=np.empty(0, dtype=np.int64),
        kept=np.empty(0, dtype=bool),
        max_sim_at_decision=np.empty(0, dtype=np.float64),
        nearest_kept=np.empty(0, dtype=np.int64),
        threshold=threshold,
        budget=budget,
    )


# ----------------------------------------------------------------------------------------------
# The slow reference loop
# ----------------------------------------------------------------------------------------------


def plain_select_with_stats(
    scores: npt.ArrayLike | torch.Tensor,
    embeddings: npt.ArrayLike | torch.Tensor,
    budget: int | None,
    threshold: float = 0.9,
) -> SelectionStats:
    """THE selection rule, as the plain one-candidate-at-a-time loop (slow reference for tests/bench).

    Visit rows by descending score (stable: ties keep input order). Keep the first. Keep a later
    row only if its cosine similarity to every row kept so far is <= threshold. Stop when `budget`
    rows are kept (None or -1: no limit). `select_with_stats` must return exactly what this returns.
    It normalises the whole pool in memory, so use it on small pools only.
    """
    pool = _as_pool(embeddings)
    n = pool.shape[0]
    sc = _as_scores(scores, n)
    cap = _as_budget(budget, n)
    thr = _as_threshold(threshold)
    if cap == 0 or n == 0:
        return _empty_stats(thr, cap)
    order = score_order(sc)
    # the same float32 unit vectors as the fast path, held in float64 (exactly) to compare directly
    unit = _normalise_rows(pool, _row_norms(pool)).astype(np.float64)
    kept_vecs = np.empty((cap, pool.shape[1]))
    kept: list[int] = []
    visited: list[int] = []
    kept_flags: list[bool] = []
    max_sims: list[float] = []
    nearest: list[int] = []
    for row in order:
        if len(kept) >= cap:
            break
        visited.append(int(row))
        if not kept:
            best, near, keep = -math.inf, -1, True
        else:
            sims = _exact_sims(kept_vecs[: len(kept)], unit[row][None, :], thr)
            j = int(np.argmax(sims))
            best, near = float(sims[j]), kept[j]
            keep = not bool(np.any(sims > thr))
        max_sims.append(best)
        nearest.append(near)
        kept_flags.append(keep)
        if keep:
            kept_vecs[len(kept)] = unit[row]
            kept.append(int(row))
    return SelectionStats(
        indices=np.asarray(kept, dtype=np.int64),
        scanned=len(visited),
        rejected_similar=len(visited) - len(kept),
        candidates=np.asarray(visited, dtype=np.int64),
        kept=np.asarray(kept_flags, dtype=bool),
        max_sim_at_decision=np.asarray(max_sims, dtype=np.float64),
        nearest_kept=np.asarray(nearest, dtype=np.int64),
        threshold=thr,
        budget=cap,
    )


def plain_select(
    scores: npt.ArrayLike | torch.Tensor,
    embeddings: npt.ArrayLike | torch.Tensor,
    budget: int | None,
    threshold: float = 0.9,
) -> np.ndarray:
    """Indices from the slow reference loop (see `plain_select_with_stats`)."""
    return plain_select_with_stats(scores, embeddings, budget, threshold).indices


# ----------------------------------------------------------------------------------------------
# The blocked path
# ----------------------------------------------------------------------------------------------


def _next_block_size(n_kept: int, remaining: int, rate: float, block_size: int) -> int:
    """Aim for about min(remaining, n_kept/2, 1024) acceptances per block.

    Small blocks early (nearly everything is accepted, the intra-block matrix would be large and
    useless), big blocks once most candidates are rejected, and no big overshoot past the budget.
    """
    target = min(remaining, max(16, min(1024, n_kept // 2)))
    return max(1, min(block_size, math.ceil(target / max(rate, 1e-4))))


def _screen_against_kept(
    xt: torch.Tensor, unit: np.ndarray, kept: torch.Tensor, thr: float, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Largest decision-grade similarity of each block row to the kept rows, and which kept row.

    One float32 matmul (in column chunks so that block x kept never exceeds ~64M floats); rows
    whose maximum lies within `margin` of the threshold get their near-threshold pairs recomputed
    exactly, so `result > thr` is exactly the loop's decision.
    """
    size, n_kept = xt.shape[0], kept.shape[0]
    step = max(1, _SCREEN_ELEMENTS // max(size, 1))
    vmax_t, amax_t = None, None
    for start in range(0, n_kept, step):
        v, a = (xt @ kept[start : start + step].T).max(dim=1)
        if vmax_t is None:
            vmax_t, amax_t = v, a
        else:
            better = v > vmax_t
            vmax_t = torch.where(better, v, vmax_t)
            amax_t = torch.where(better, a + start, amax_t)
    vmax = vmax_t.cpu().numpy().astype(np.float64)
    amax = amax_t.cpu().numpy()
    maybe = np.flatnonzero((vmax <= thr + margin) & (vmax > thr - margin))
    rows_per = max(1, _SCREEN_ELEMENTS // max(n_kept, 1))
    for g in range(0, maybe.size, rows_per):
        rows = maybe[g : g + rows_per]
        sub = (xt[torch.from_numpy(rows).to(xt.device)] @ kept.T).cpu().numpy()
        mi, mj = np.nonzero(sub > thr - margin)
        dec = sub.astype(np.float64)
        dec[mi, mj] = _exact_sims(unit[rows[mi]], kept[torch.from_numpy(mj).to(kept.device)].cpu().numpy(), thr)
        amax[rows] = dec.argmax(axis=1)
        vmax[rows] = dec[np.arange(len(rows)), amax[rows]]
    return vmax, amax


def _resolve_block(
    xt: torch.Tensor,
    unit: np.ndarray,
    surv: np.ndarray,
    thr: float,
    margin: float,
    best: np.ndarray,
    near_pos: np.ndarray,
) -> np.ndarray:
    """Greedy pass over the block's survivors (rows not rejected by the kept set), in score order.

    Survivor j is accepted unless similar (> thr) to an earlier ACCEPTED survivor. Uses one
    survivors-vs-survivors matrix. Updates `best`/`near_pos` (block positions, -1 = none) for
    survivors with their largest similarity to earlier accepted survivors; returns accepted flags
    over `surv`.
    """
    s = len(surv)
    if s <= 1:
        return np.ones(s, dtype=bool)
    dev = xt.device
    xs = xt[torch.from_numpy(surv).to(dev)]
    gram = xs @ xs.T
    lower = torch.ones((s, s), dtype=torch.bool, device=dev).tril_(-1)
    conflict_t = (gram > thr + margin) & lower
    band_t = (gram > thr - margin) & lower & ~conflict_t
    conflict = conflict_t.cpu().numpy()
    band_i, band_j = (t.cpu().numpy() for t in band_t.nonzero(as_tuple=True))
    exact = np.empty(0)
    if band_i.size:
        exact = _exact_sims(unit[surv[band_i]], unit[surv[band_j]], thr)
        conflict[band_i[exact > thr], band_j[exact > thr]] = True
    has_conflict = conflict.any(axis=1)
    accepted = ~has_conflict
    for j in np.flatnonzero(has_conflict):
        accepted[j] = not np.any(conflict[j, :j] & accepted[:j])

    # statistics: largest decision-grade similarity to earlier accepted survivors (band pairs exact)
    acc_t = torch.from_numpy(accepted).to(dev)
    masked = gram.masked_fill(~(lower & acc_t[None, :]) | band_t, -math.inf)
    val_t, arg_t = masked.max(dim=1)
    val, arg = val_t.cpu().numpy().astype(np.float64), arg_t.cpu().numpy()
    for i, j, e in zip(band_i, band_j, exact):
        if accepted[j] and e > val[i]:
            val[i], arg[i] = e, j
    better = val > best[surv]
    best[surv[better]] = val[better]
    near_pos[surv[better]] = surv[arg[better]]
    return accepted


def select_with_stats(
    scores: npt.ArrayLike | torch.Tensor,
    embeddings: npt.ArrayLike | torch.Tensor,
    budget: int | None,
    threshold: float = 0.9,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
) -> SelectionStats:
    """`select`, plus what happened to every examined candidate (see `SelectionStats`).

    Rule: visit rows by descending score (stable); keep the first; keep a later row only if its
    cosine similarity to every row kept so far is <= threshold; stop at `budget` kept rows.
    Identical to `plain_select_with_stats` on any input; `max_sim_at_decision` may differ from it in
    the last bits (float32 screening) but never on which side of the threshold it lies.
    """
    pool = _as_pool(embeddings)
    n, dim = pool.shape
    sc = _as_scores(scores, n)
    cap = _as_budget(budget, n)
    thr = _as_threshold(threshold)
    if isinstance(block_size, bool) or int(block_size) < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size!r}")
    block_size = int(block_size)
    if cap == 0 or n == 0:
        return _empty_stats(thr, cap)
    order = score_order(sc)
    norms = _row_norms(pool)
    dev = _as_device(device)
    margin = _screen_margin(dim, dev)

    # One preallocated kept matrix (grown geometrically only if it would exceed ~2 GiB up front).
    capacity = cap if cap * dim * 4 <= (2 << 30) else max(1, (2 << 30) // (dim * 4))
    kept = torch.empty((capacity, dim), dtype=torch.float32, device=dev)
    kept_rows = np.empty(cap, dtype=np.int64)
    n_kept = 0

    out_best: list[np.ndarray] = []
    out_near: list[np.ndarray] = []
    out_kept: list[np.ndarray] = []
    pos = 0
    rate = 1.0
    while n_kept < cap and pos < n:
        size = _next_block_size(n_kept, cap - n_kept, rate, block_size)
        cand = order[pos : pos + size]
        size = len(cand)
        unit = _load_normalised(pool, cand, norms)
        xt = torch.from_numpy(unit).to(dev)
        best = np.full(size, -np.inf)
        near_pos = np.full(size, -1, dtype=np.int64)  # block position of nearest in-block accepted row
        near_row = np.full(size, -1, dtype=np.int64)  # pool row of nearest kept row (before the block)
        rejected = np.zeros(size, dtype=bool)

        if n_kept:
            best, amax = _screen_against_kept(xt, unit, kept[:n_kept], thr, margin)
            rejected = best > thr
            near_row = kept_rows[amax]

        surv = np.flatnonzero(~rejected)
        accepted = np.zeros(size, dtype=bool)
        accepted[surv] = _resolve_block(xt, unit, surv, thr, margin, best, near_pos)

        # Budget: everything after the cap-th acceptance was never "examined".
        acc_pos = np.flatnonzero(accepted)
        room = cap - n_kept
        cut = size
        if acc_pos.size >= room:
            acc_pos = acc_pos[:room]
            cut = int(acc_pos[-1]) + 1
        accepted[cut:] = False

        # Statistics for candidates rejected by the kept set: also look at rows accepted earlier in
        # this block (they were kept at decision time too).
        dropped = np.flatnonzero(rejected[:cut])
        if dropped.size and acc_pos.size:
            h = (xt[torch.from_numpy(dropped).to(dev)] @ xt[torch.from_numpy(acc_pos).to(dev)].T).cpu().numpy()
            h = np.where(acc_pos[None, :] < dropped[:, None], h.astype(np.float64), -np.inf)
            arg = h.argmax(axis=1)
            val = h[np.arange(len(dropped)), arg]
            better = val > best[dropped]
            best[dropped[better]] = val[better]
            near_pos[dropped[better]] = acc_pos[arg[better]]

        near = np.where(near_pos >= 0, cand[np.maximum(near_pos, 0)], near_row)
        out_best.append(best[:cut])
        out_near.append(near[:cut])
        out_kept.append(accepted[:cut])

        a = acc_pos.size
        if a:
            if n_kept + a > kept.shape[0]:
                grown = torch.empty(
                    (min(cap, max(2 * kept.shape[0], n_kept + a)), dim), dtype=torch.float32, device=dev
                )
                grown[:n_kept] = kept[:n_kept]
                kept = grown
            kept[n_kept : n_kept + a] = xt[torch.from_numpy(acc_pos).to(dev)]
            kept_rows[n_kept : n_kept + a] = cand[acc_pos]
            n_kept += a
        rate = a / cut
        pos += cut

    kept_flags = np.concatenate(out_kept)
    return SelectionStats(
        indices=kept_rows[:n_kept].copy(),
        scanned=pos,
        rejected_similar=pos - n_kept,
        candidates=order[:pos].copy(),
        kept=kept_flags,
        max_sim_at_decision=np.concatenate(out_best),
        nearest_kept=np.concatenate(out_near),
        threshold=thr,
        budget=cap,
    )


def select(
    scores: npt.ArrayLike | torch.Tensor,
    embeddings: npt.ArrayLike | torch.Tensor,
    budget: int | None,
    threshold: float = 0.9,
    *,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Row indices (int64) in selection order: best score first, diversity-filtered, up to budget.

    Rule: visit rows by descending score (stable: ties keep input order); the first is always
    kept; a row is kept only if its cosine similarity to every row kept so far is <= threshold;
    stop when `budget` rows are kept (None or -1: no limit). Zero vectors have similarity 0 to
    everything. Scores may be any real numbers (NaN raises); NaN/inf in an embedding raises.

    `embeddings` may be a numpy memmap (e.g. float16): rows are read and normalised block by block
    as they are visited, never copied whole. Runs on `device` (default: CUDA when available, else
    CPU). The result is exactly that of `plain_select` (the one-at-a-time loop) on any input; it can
    differ from cosines computed in float64 from the raw vectors only for a similarity within
    ~1e-6 of the threshold (rows are normalised to float32).
    """
    return select_with_stats(scores, embeddings, budget, threshold, block_size=block_size, device=device).indices
