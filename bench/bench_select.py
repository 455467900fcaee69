"""Benchmark: Deita's original greedy filter loop vs `deita_train.selection.select`.

Not a test: it prints figures. It exits non-zero only if the two selections differ.

Default (`python bench/bench_select.py`): a 50k x 4096 float32 pool of clustered embeddings (2000
centres + per-cluster noise, so that tight clusters are near-duplicates and loose ones are not),
random scores, budget 6000, threshold 0.9, on CPU. It compares

(a) the original loop, faithfully (batch 1): every step fancy-index copies the kept set out of the
    sorted pool, converts it to a torch tensor, L2-normalises both sides twice (as the original's
    `compute_distance` does), `torch.mm`, `any(sim > threshold)`. The original held the pool in
    float64; this bench gives it float32 (less copying, so it is flattered). If it cannot finish
    within `--original-limit-s`, it runs that long on a prefix (whose decisions are compared) and
    the total is EXTRAPOLATED, and printed as such: the step cost t(n) (n = kept rows at that
    step) is interpolated from the timed prefix and from extra timed steps at n up to the budget,
    and summed over the n that each step of the full run has.
(b) ours, `select_with_stats`.

and the "minimum matmul time": one (scanned x d) @ (budget x d)^T float32 matmul in the same run,
the similarity work the greedy rule needs at most without any overhead.

`--pool 300000 --dim 4096 --dtype float16` writes a float16 memmap to a temp file and measures the
peak resident memory of selecting from it (the original is skipped by default at that size).
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch


if TYPE_CHECKING:
    from typing_extensions import Self

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deita_train.selection import score_order, select_with_stats


# ---------------------------------------------------------------------------------------------
# memory measurement
# ---------------------------------------------------------------------------------------------


def _status_kb() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0])
    return out


class PeakRSS:
    """Samples /proc/self/status every few ms: peak RSS (and anonymous RSS) above the start level.

    torch's CPU allocations are invisible to tracemalloc, so resident memory is the honest figure.
    Memmap pages that were read show up in RssFile (page cache, reclaimable), not in RssAnon.
    """

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s

    def __enter__(self) -> Self:
        gc.collect()
        self.start = _status_kb()
        self.peak = dict(self.start)
        self.maxrss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in _status_kb().items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            time.sleep(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for key, value in _status_kb().items():
            self.peak[key] = max(self.peak.get(key, 0), value)
        self.maxrss_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def delta_mb(self, key: str) -> float:
        return (self.peak.get(key, 0) - self.start.get(key, 0)) / 1024

    def summary(self) -> str:
        return (
            f"peak RSS +{self.delta_mb('VmRSS'):.0f} MB (anonymous +{self.delta_mb('RssAnon'):.0f} MB, "
            f"file-backed +{self.delta_mb('RssFile'):.0f} MB); ru_maxrss {self.maxrss_start / 1024:.0f} -> "
            f"{self.maxrss_end / 1024:.0f} MB"
        )


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def clustered_rows(
    rng: np.random.Generator, centres: np.ndarray, sigma: np.ndarray, rows: int, dtype: np.dtype
) -> np.ndarray:
    """Rows = random centre + sigma_c * N(0, I); two members of cluster c have cosine ~ 1/(1+sigma_c^2)."""
    k = rng.integers(0, len(centres), rows)
    x = rng.standard_normal((rows, centres.shape[1]), dtype=np.float32)
    x *= sigma[k, None].astype(np.float32)
    x += centres[k]
    return x.astype(dtype, copy=False)


def make_pool(args: argparse.Namespace, path: Path | None) -> np.ndarray:
    rng = np.random.default_rng(args.seed)
    centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
    sigma = rng.uniform(args.sigma_min, args.sigma_max, args.clusters)
    dtype = np.dtype(args.dtype)
    if path is None:
        return clustered_rows(rng, centres, sigma, args.pool, dtype)
    pool = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(args.pool, args.dim))
    step = 8192
    for start in range(0, args.pool, step):
        stop = min(args.pool, start + step)
        pool[start:stop] = clustered_rows(rng, centres, sigma, stop - start, dtype)
    pool.flush()
    del pool
    return np.load(path, mmap_mode="r")


# ---------------------------------------------------------------------------------------------
# the original loop (deita/selection/filter/base.py, IterativeFilter.filter with batch_size=1)
# ---------------------------------------------------------------------------------------------


def _compute_distance(matrix: torch.Tensor, matrix_2: torch.Tensor) -> torch.Tensor:
    # normalize_emb=True, then the cosine branch normalises again: both as in the original
    matrix = matrix / matrix.norm(dim=1)[:, None]
    matrix_2 = matrix_2 / matrix_2.norm(dim=1)[:, None]
    matrix_norm = matrix / matrix.norm(dim=1)[:, None]
    matrix_2_norm = matrix_2 / matrix_2.norm(dim=1)[:, None]
    return torch.mm(matrix_norm, matrix_2_norm.t())


def _distance_chunk_by_chunk(existing_emb: np.ndarray, cur_emb: torch.Tensor, chunk_size: int) -> torch.Tensor:
    placeholder = torch.zeros((cur_emb.size(0), existing_emb.shape[0]), dtype=torch.float32)
    for i in range(0, existing_emb.shape[0], chunk_size):
        chunk = torch.tensor(existing_emb[i : i + chunk_size], dtype=torch.float32)
        dist = _compute_distance(cur_emb, chunk)
        placeholder[:, i : i + dist.size(1)] = dist
    return placeholder


def original_step(sorted_pool: np.ndarray, i: int, filtered: list[int], threshold: float) -> bool:
    """One step of the original loop; True if candidate i (sorted position) is kept."""
    cur_emb = torch.tensor(sorted_pool[i : i + 1], dtype=torch.float32)
    existing_emb = sorted_pool[filtered]  # a fresh numpy copy of the kept set, every step
    dist_existing = _distance_chunk_by_chunk(existing_emb, cur_emb, 100000)
    existing_bool = torch.any(dist_existing > threshold, dim=1)
    dist_cur = _distance_chunk_by_chunk(sorted_pool[i : i + 1], cur_emb, 100000).tril(-1)
    cur_bool = torch.any(dist_cur > threshold, dim=1)
    return not bool((existing_bool | cur_bool)[0])


def original_loop(
    sorted_pool: np.ndarray, budget: int, threshold: float, time_limit_s: float
) -> tuple[list[int], int, bool, list[tuple[int, float]]]:
    """Returns (kept sorted positions, candidates examined, finished?, [(n_kept, step seconds)])."""
    filtered = [0]
    steps: list[tuple[int, float]] = []
    t_start = time.perf_counter()
    i = 0
    for i in range(1, sorted_pool.shape[0]):
        if len(filtered) >= budget:
            return filtered[:budget], i, True, steps
        n_before = len(filtered)
        t0 = time.perf_counter()
        if original_step(sorted_pool, i, filtered, threshold):
            filtered.append(i)
        t1 = time.perf_counter()
        steps.append((n_before, t1 - t0))
        if t1 - t_start > time_limit_s and len(filtered) < budget:
            return filtered, i + 1, False, steps
    return filtered[:budget], sorted_pool.shape[0], True, steps


def probe_original_cost(
    sorted_pool: np.ndarray, kept_positions: np.ndarray, threshold: float, sizes: list[int], reps: int
) -> list[tuple[int, float]]:
    """Time original steps with n kept rows, for n the loop only reaches later (cost model points)."""
    out = []
    probe = 1  # which candidate is compared does not change the cost
    for n in sizes:
        filtered = [int(p) for p in kept_positions[:n]]
        for _ in range(reps):
            t0 = time.perf_counter()
            original_step(sorted_pool, probe, filtered, threshold)
            out.append((n, time.perf_counter() - t0))
    return out


def fit_points(steps: list[tuple[int, float]], probes: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(n, median seconds) per bin of the measured prefix (20 bins) and per probe size: equal weights.

    Medians: a robust step cost. On a shared machine a few steps stall (tens of ms); the caller
    prints how the model compares with the measured prefix so that the effect is visible.
    """
    n_s = np.array([q[0] for q in steps], dtype=np.float64)
    t_s = np.array([q[1] for q in steps])
    xs, ys = [], []
    for part in np.array_split(np.argsort(n_s, kind="stable"), min(20, len(n_s))):
        if part.size:
            xs.append(float(np.median(n_s[part])))
            ys.append(float(np.median(t_s[part])))
    for n in sorted({q[0] for q in probes}):
        xs.append(float(n))
        ys.append(float(np.median([t for m, t in probes if m == n])))
    return np.array(xs), np.array(ys)


# ---------------------------------------------------------------------------------------------


def minimum_matmul_time(pool: np.ndarray, rows: np.ndarray, kept_rows: np.ndarray, block: int = 1024) -> float:
    """Time of the matmuls the greedy rule needs at minimum, float32, data prepared beforehand.

    `rows` are the scanned candidates in scan order, `kept_rows` the kept ones in selection order
    (also scan order). Each block of candidates is multiplied only by the rows kept before the
    block starts, the work any exact implementation must do (comparisons inside a block are extra).
    """
    kept = torch.from_numpy(np.ascontiguousarray(pool[kept_rows], dtype=np.float32))
    kept_before = np.concatenate([[0], np.cumsum(np.isin(rows, kept_rows))])
    work = [
        (torch.from_numpy(np.ascontiguousarray(pool[rows[s : s + block]], dtype=np.float32)), int(kept_before[s]))
        for s in range(0, len(rows), block)
    ]
    t0 = time.perf_counter()
    for cand, n_kept in work:
        if n_kept:
            (cand @ kept[:n_kept].T).max(dim=1)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--pool", type=int, default=50000, help="rows in the pool")
    p.add_argument("--dim", type=int, default=4096, help="embedding dimension")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--clusters", type=int, default=2000)
    p.add_argument(
        "--sigma-min", type=float, default=0.15, help="per-cluster noise scale, low end (tight = duplicates)"
    )
    p.add_argument("--sigma-max", type=float, default=0.38, help="high end (cos ~ 1/(1+sigma^2); 0.333 ~ 0.9)")
    p.add_argument("--budget", type=int, default=6000)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--memmap", choices=["auto", "yes", "no"], default="auto", help="auto: a memmap when dtype is float16"
    )
    p.add_argument(
        "--original",
        choices=["auto", "run", "skip"],
        default="auto",
        help="auto: run it unless the pool is over 100k rows",
    )
    p.add_argument(
        "--original-limit-s", type=float, default=120.0, help="stop the original after this long and extrapolate"
    )
    p.add_argument("--device", default="cpu", help="device for ours (the comparison is meant for cpu)")
    p.add_argument("--block-size", type=int, default=4096)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    use_memmap = args.memmap == "yes" or (args.memmap == "auto" and args.dtype == "float16")
    run_original = args.original == "run" or (args.original == "auto" and args.pool <= 100000)
    print(
        f"pool {args.pool} x {args.dim} {args.dtype}{' memmap' if use_memmap else ''}, {args.clusters} clusters, "
        f"budget {args.budget}, threshold {args.threshold}, torch threads {torch.get_num_threads()}, device {args.device}"
    )

    tmpdir = tempfile.TemporaryDirectory(prefix="bench_select_") if use_memmap else None
    try:
        t0 = time.perf_counter()
        pool = make_pool(args, Path(tmpdir.name) / "pool.npy" if tmpdir else None)
        scores = np.random.default_rng(args.seed + 1).random(args.pool)
        print(f"built pool in {time.perf_counter() - t0:.1f} s ({pool.nbytes / 2**30:.2f} GiB)")
        if use_memmap:  # drop the written pages' influence: measure from a clean mapping
            gc.collect()

        # warm-up (torch thread pool, BLAS, allocator) so that no timed figure pays for first calls
        select_with_stats(scores[:256], np.asarray(pool[:256]), 16, args.threshold, device=args.device)
        minimum_matmul_time(pool, np.arange(256), np.arange(64))

        # (b) ours
        with PeakRSS() as mem_ours:
            t0 = time.perf_counter()
            stats = select_with_stats(
                scores, pool, args.budget, args.threshold, block_size=args.block_size, device=args.device
            )
            t_ours = time.perf_counter() - t0
        print(
            f"ours: {t_ours:.2f} s, kept {len(stats.indices)}, scanned {stats.scanned}, "
            f"rejected as similar {stats.rejected_similar}; {mem_ours.summary()}"
        )
        float32_copy_mb = args.pool * args.dim * 4 / 2**20
        print(
            f"  a float32 copy of the pool would be {float32_copy_mb:.0f} MB; an N x N float32 matrix "
            f"{args.pool**2 * 4 / 2**30:.0f} GiB"
        )

        t_min = minimum_matmul_time(pool, stats.candidates, stats.indices)
        print(
            f"minimum matmul ({stats.scanned} scanned x {args.dim}, each block against the rows kept before it): {t_min:.2f} s; "
            f"ours / minimum = {t_ours / t_min:.2f}x"
        )

        rows = [("ours (blocked, exact)", t_ours, "measured"), ("minimum matmul", t_min, "measured")]
        status = 0
        if run_original:
            order = score_order(scores)
            sorted_pool = np.ascontiguousarray(pool[order])  # the original sorts the DataFrame first
            with PeakRSS() as mem_orig:
                t0 = time.perf_counter()
                kept_pos, examined, finished, steps = original_loop(
                    sorted_pool, args.budget, args.threshold, args.original_limit_s
                )
                t_orig_measured = time.perf_counter() - t0
            ours_pos = np.flatnonzero(stats.kept)  # sorted positions kept by ours
            ours_prefix = ours_pos[ours_pos < examined]
            same = np.array_equal(np.asarray(kept_pos, dtype=np.int64), ours_prefix)
            what = "all" if finished else f"the first {examined}"
            print(
                f"original: {t_orig_measured:.1f} s over {what} of {stats.scanned} candidates, kept {len(kept_pos)}; "
                f"{mem_orig.summary()}"
            )
            print(f"  identical selection on {what} candidates: {same}")
            if not same:
                status = 1
                theirs = np.zeros(examined, dtype=bool)
                theirs[np.asarray(kept_pos, dtype=np.int64)] = True
                first = int(np.flatnonzero(theirs != stats.kept[:examined])[0])
                print(
                    f"  first difference at sorted position {first} (row {stats.candidates[first]}): original kept="
                    f"{bool(theirs[first])}, ours kept={bool(stats.kept[first])}, our max cosine to kept rows "
                    f"{stats.max_sim_at_decision[first]:.9f}"
                )
            if finished:
                t_orig, how = t_orig_measured, "measured"
            else:
                n_kept_at = np.concatenate([[0], np.cumsum(stats.kept)[:-1]])[1:]  # kept rows before each step
                full = len(stats.indices)
                sizes = sorted({max(1, full * k // 8) for k in range(1, 9)})
                probes = probe_original_cost(sorted_pool, ours_pos, args.threshold, sizes, reps=5)
                n_arr, t_arr = fit_points(steps, probes)
                srt = np.argsort(n_arr, kind="stable")
                t_orig = float(np.sum(np.interp(n_kept_at, n_arr[srt], t_arr[srt])))
                t_prefix_model = float(np.sum(np.interp([q[0] for q in steps], n_arr[srt], t_arr[srt])))
                how = "EXTRAPOLATED"
                curve = ", ".join(
                    f"n={int(n)}: {t * 1e3:.1f} ms" for n, t in zip(n_arr[srt], t_arr[srt]) if n in sizes
                )
                print(
                    f"  EXTRAPOLATED original total: {t_orig:.0f} s = sum over the {stats.scanned - 1} steps of the full "
                    f"run of the step cost t(n) at the n kept rows of that step, t(n) interpolated from the medians of "
                    f"{len(steps)} timed steps ({len(n_arr) - len(sizes)} bins of n) and of 5 probe steps at "
                    f"each of n = {sizes} ({curve}); for the measured prefix the model gives {t_prefix_model:.1f} s "
                    f"against {sum(q[1] for q in steps):.1f} s timed (the difference is stalls from other load)"
                )
            rows.insert(0, ("original loop (batch 1)", t_orig, how))
            print(f"speed-up vs original: {t_orig / t_ours:.0f}x ({how.lower()})")
            del sorted_pool

        print("\nsummary")
        print(f"  {'method':<26}{'seconds':>10}  {'vs ours':>9}  how")
        for name, t, how in rows:
            print(f"  {name:<26}{t:>10.2f}  {t / t_ours:>8.2f}x  {how}")
        print(
            f"  ours: scanned {stats.scanned}, kept {len(stats.indices)}, peak anonymous RSS "
            f"+{mem_ours.delta_mb('RssAnon'):.0f} MB (float32 pool copy: {float32_copy_mb:.0f} MB)"
        )
        if status:
            print("MISMATCH: the selections differ", file=sys.stderr)
        return status
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()


if __name__ == "__main__":
    sys.exit(main())
