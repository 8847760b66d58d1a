"""Near-duplicate detection: MinHash signatures, LSH banding, and clusters, in NumPy.

Why our own instead of a library: the work is one big array program. Polars splits and hashes
words in Rust, NumPy folds word hashes into shingle hashes (flows/curation/ngrams.py), and each
signature column is min over a row's shingles of an affine permutation of the 32-bit shingle
hash, (a*x + b) mod 2^32 with odd a (a bijection of the 32-bit space), computed block-wise with
`np.minimum.reduceat` so no Python code runs per row. Blocks run on a small thread pool (NumPy
releases the GIL). bench/dedup.py measures this against datasketch, rensa and datatrove on the
same rows.

Defaults follow the usual anchors: word 5-gram shingles, 112 permutations as 14 bands x 8 rows
(datatrove's choice; collision probability 1-(1-J^8)^14 is 0.92 at J=0.8 and 0.99 at J=0.9),
and a candidate pair is kept only when its signatures agree on enough permutations: estimated
Jaccard at least threshold - 2 standard errors of the estimator (sqrt(t(1-t)/permutations)), so a
true pair right at the threshold survives ~97% of the time while accidental band collisions
between merely similar rows are cut.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from flows.curation.ngrams import _POLY, ngram_hashes

_MAX = np.uint32(0xFFFFFFFF)


@dataclass(frozen=True)
class MinHashParams:
    shingle: int = 5
    permutations: int = 112
    bands: int = 14
    rows: int = 8
    threshold: float = 0.8
    seed: int = 1
    verify: bool = True

    @property
    def verify_threshold(self) -> float:
        t = self.threshold
        return t - 2 * (t * (1 - t) / self.permutations) ** 0.5

    def __post_init__(self):
        if self.bands * self.rows > self.permutations:
            raise ValueError(f"bands x rows ({self.bands}x{self.rows}) exceeds permutations "
                             f"({self.permutations})")


def _permutations(p: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(p.seed)
    a = rng.integers(1, 2**32, size=p.permutations, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
    b = rng.integers(0, 2**32, size=p.permutations, dtype=np.uint64).astype(np.uint32)
    return a, b


def _block(x: np.ndarray, starts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    v = np.multiply.outer(x, a)  # (shingles, permutations) uint32, wraps mod 2^32
    v += b
    return np.minimum.reduceat(v, starts, axis=0)


def signatures(texts: pl.Series, params: MinHashParams = MinHashParams(), *,
               workers: int | None = None, batch_rows: int = 50_000,
               block_shingles: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(signature matrix (rows, permutations) uint32, has_shingles bool per row)."""
    n = len(texts)
    a, b = _permutations(params)
    sig = np.full((n, params.permutations), _MAX, dtype=np.uint32)
    has = np.zeros(n, dtype=bool)
    workers = workers or min(2, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for lo in range(0, n, batch_rows):
            rows, grams = ngram_hashes(texts.slice(lo, batch_rows), params.shingle)
            if len(grams) == 0:
                continue
            x = (grams ^ (grams >> np.uint64(32))).astype(np.uint32)
            seg = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
            seg_rows = rows[seg] + lo
            has[seg_rows] = True
            # Blocks end on row boundaries so each reduceat segment is one whole row.
            cuts = np.searchsorted(seg, np.arange(0, len(x), block_shingles), side="left")
            cuts = np.unique(np.r_[cuts, len(seg)])
            jobs = []
            for i in range(len(cuts) - 1):
                s0, s1 = cuts[i], cuts[i + 1]
                g0 = seg[s0]
                g1 = seg[s1] if s1 < len(seg) else len(x)
                jobs.append((s0, s1, pool.submit(_block, x[g0:g1], seg[s0:s1] - g0, a, b)))
            for s0, s1, fut in jobs:
                sig[seg_rows[s0:s1]] = fut.result()
    return sig, has


def band_keys(sig: np.ndarray, band: int, rows: int) -> np.ndarray:
    cols = sig[:, band * rows:(band + 1) * rows].astype(np.uint64)
    key = cols[:, 0].copy()
    for c in range(1, rows):
        key *= _POLY
        key += cols[:, c]
    return key


def candidate_pairs(sig: np.ndarray, has: np.ndarray, params: MinHashParams) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs sharing at least one band bucket (each row linked to its bucket's first row)."""
    idx = np.flatnonzero(has)
    us, vs = [], []
    if len(idx) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    for band in range(params.bands):
        key = band_keys(sig[idx], band, params.rows)
        order = np.argsort(key, kind="stable")
        ks = key[order]
        new = np.r_[True, ks[1:] != ks[:-1]]
        first = np.maximum.accumulate(np.where(new, np.arange(len(ks)), 0))
        dup = ~new
        us.append(idx[order[first[dup]]])
        vs.append(idx[order[dup]])
    if not us:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    u, v = np.concatenate(us), np.concatenate(vs)
    lo, hi = np.minimum(u, v), np.maximum(u, v)
    pairs = np.unique(lo.astype(np.int64) * len(sig) + hi)
    return pairs // len(sig), pairs % len(sig)


def estimated_jaccard(sig: np.ndarray, u: np.ndarray, v: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    out = np.empty(len(u), dtype=np.float64)
    for lo in range(0, len(u), chunk):
        out[lo:lo + chunk] = (sig[u[lo:lo + chunk]] == sig[v[lo:lo + chunk]]).mean(axis=1)
    return out


def connected_components(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Label of each node = the smallest node index in its component (vectorized union-find:
    hook larger roots under smaller ones, then pointer-jump until stable)."""
    parent = np.arange(n, dtype=np.int64)
    while len(u):
        pu, pv = parent[u], parent[v]
        lo, hi = np.minimum(pu, pv), np.maximum(pu, pv)
        moving = lo != hi
        if not moving.any():
            break
        np.minimum.at(parent, hi[moving], lo[moving])
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent


def near_duplicate_clusters(texts: pl.Series, params: MinHashParams = MinHashParams(), *,
                            workers: int | None = None) -> np.ndarray:
    """Cluster label per row (smallest row index of its cluster; a row alone is its own label)."""
    sig, has = signatures(texts, params, workers=workers)
    u, v = candidate_pairs(sig, has, params)
    if params.verify and len(u):
        keep = estimated_jaccard(sig, u, v) >= params.verify_threshold
        u, v = u[keep], v[keep]
    return connected_components(len(texts), u, v)
