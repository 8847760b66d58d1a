"""Near-duplicate detection: MinHash signatures, LSH banding, and clusters, in NumPy.

Why our own instead of a library: the work is one big array program. NumPy tokenizes and hashes
words and folds them into shingle hashes (flows/curate/ngrams.py); no Python code runs per row.
Two signature schemes:

- "oph" (default): one-permutation MinHash (Li, Owen & Zhang 2012) with densification
  by rotation (Shrivastava & Li 2014). Each shingle hash is mixed once; its top bits pick one of
  `permutations` bins and its low 32 bits are the value; a signature slot is the minimum value
  in its bin, and an empty bin copies the next non-empty bin to its right. Two rows agree on a
  slot with probability equal to their Jaccard similarity, as with k permutations, but the cost
  is O(shingles) instead of O(shingles x permutations): measured in bench/dedup.py.
- "permutations": classic k-permutation MinHash: slot k is min over shingles of
  (a_k*x + b_k) mod 2^32 (odd a_k: a bijection of the 32-bit space), block-wise with
  `np.minimum.reduceat` on a small thread pool (NumPy releases the GIL).

Defaults follow the usual anchors: word 5-gram shingles, 112 permutations as 14 bands x 8 rows
(datatrove's choice; collision probability 1-(1-J^8)^14 is 0.92 at J=0.8 and 0.99 at J=0.9),
and every candidate pair from the bands is then verified by its exact shingle Jaccard (the two
rows are re-shingled; candidates are few, so this is cheap): band collisions between merely
similar rows never merge clusters, and short rows, whose sketches are noisy, are judged exactly.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import polars as pl

from flows.curate.ngrams import POLY, fmix64, ngram_hashes

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
    scheme: str = "oph"  # or "permutations"

    def __post_init__(self):
        if self.scheme not in ("oph", "permutations"):
            raise ValueError(f"unknown MinHash scheme {self.scheme!r}: 'oph' or 'permutations'")
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
    sig = np.full((n, params.permutations), _MAX, dtype=np.uint32)
    has = np.zeros(n, dtype=bool)
    workers = workers or min(2, os.cpu_count() or 1)
    batches = range(0, n, batch_rows)
    with ThreadPoolExecutor(workers) as pool:
        if params.scheme == "oph":
            # Batches in parallel: tokenizing and binning are NumPy calls that release the GIL.
            for _ in pool.map(lambda lo: _oph_batch(texts.slice(lo, batch_rows), lo, params,
                                                    sig, has), batches):
                pass
        else:
            for lo in batches:
                _permutation_batch(texts.slice(lo, batch_rows), lo, params, sig, has, pool,
                                   block_shingles)
    return sig, has


def _oph_batch(texts: pl.Series, lo: int, params: MinHashParams, sig: np.ndarray,
               has: np.ndarray) -> None:
    rows, grams = ngram_hashes(texts, params.shingle)
    if len(grams) == 0:
        return
    k = params.permutations
    x = fmix64(grams ^ np.uint64((params.seed * 0x9E3779B97F4A7C15) % 2**64))
    bins = (((x >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32)).astype(np.int64)
    values = (x & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    block = np.full(len(texts) * k, _MAX, dtype=np.uint32)
    np.minimum.at(block, rows * k + bins, values)
    block = block.reshape(len(texts), k)
    present = np.bincount(rows, minlength=len(texts)) > 0
    _densify(block, present)
    sig[lo:lo + len(texts)] = block
    has[lo:lo + len(texts)] = present


def _densify(block: np.ndarray, present: np.ndarray) -> None:
    """Rotation densification (Shrivastava & Li 2014): an empty bin takes the value of the next
    non-empty bin to its right, wrapping around. Values carry no bin index, but a shingle lives
    in exactly one bin, so equal copied values still mean the same shingle."""
    k = block.shape[1]
    filled = block != _MAX
    if filled[present].all():
        return
    pos = np.where(np.concatenate([filled, filled], axis=1), np.arange(2 * k, dtype=np.int32),
                   np.int32(4 * k))
    nxt = np.minimum.accumulate(pos[:, ::-1], axis=1)[:, ::-1][:, :k] % k
    nxt[~present] = np.arange(k, dtype=np.int32)  # rows without shingles stay empty
    block[:] = np.take_along_axis(block, nxt, axis=1)


def _permutation_batch(texts, lo, params, sig, has, pool, block_shingles) -> None:
    a, b = _permutations(params)
    rows, grams = ngram_hashes(texts, params.shingle)
    if len(grams) == 0:
        return
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


def band_keys(sig: np.ndarray, band: int, rows: int) -> np.ndarray:
    cols = sig[:, band * rows:(band + 1) * rows].astype(np.uint64)
    key = cols[:, 0].copy()
    for c in range(1, rows):
        key *= POLY
        key += cols[:, c]
    return key


def candidate_pairs(sig: np.ndarray, has: np.ndarray, params: MinHashParams,
                    window: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs sharing a band bucket. Inside a bucket every row is paired with the next
    `window - 1` rows (all pairs for buckets of up to `window` rows, a chain for larger ones):
    verification may reject a pair, and all-pairs keeps two true duplicates connected even when
    the bucket's first row is not similar to them."""
    idx = np.flatnonzero(has)
    us, vs = [], []
    if len(idx) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    for band in range(params.bands):
        key = band_keys(sig[idx], band, params.rows)
        order = np.argsort(key, kind="stable")
        ks = key[order]
        for d in range(1, window):
            same = ks[d:] == ks[:-d]
            if not same.any():
                break
            us.append(idx[order[:-d][same]])
            vs.append(idx[order[d:][same]])
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


def _expand(start: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For segments (start, size): (segment number, position) of every element, vectorized."""
    total = int(size.sum())
    seg = np.repeat(np.arange(len(size)), size)
    first = np.r_[0, np.cumsum(size)[:-1]]
    return seg, np.arange(total) - first[seg] + start[seg]


def exact_jaccard(texts: pl.Series, u: np.ndarray, v: np.ndarray, shingle: int,
                  chunk: int = 200_000) -> np.ndarray:
    """Jaccard similarity of the shingle sets of rows u[i] and v[i], computed exactly.

    Sets are compared by hashing (pair, shingle) keys: a key seen from both sides of a pair is a
    shared shingle. All NumPy; candidates are re-shingled, not kept from the signature pass."""
    out = np.empty(len(u), dtype=np.float64)
    salt = np.uint64(0xD6E8FEB86659FD93)
    for lo in range(0, len(u), chunk):
        cu, cv = u[lo:lo + chunk], v[lo:lo + chunk]
        involved = np.unique(np.concatenate([cu, cv]))
        rows, grams = ngram_hashes(texts.gather(involved), shingle)
        # distinct shingles per row, grouped by row
        _, first = np.unique(grams ^ fmix64(rows.astype(np.uint64) * salt), return_index=True)
        first.sort()
        rows, grams = rows[first], grams[first]
        size = np.bincount(rows, minlength=len(involved))
        start = np.r_[0, np.cumsum(size)[:-1]]
        a, b = np.searchsorted(involved, cu), np.searchsorted(involved, cv)
        pa, ia = _expand(start[a], size[a])
        pb, ib = _expand(start[b], size[b])
        pair = np.concatenate([pa, pb])
        keys = np.concatenate([grams[ia], grams[ib]]) ^ fmix64(pair.astype(np.uint64) * salt)
        order = np.argsort(keys)
        ks = keys[order]
        shared = np.bincount(pair[order][1:][ks[1:] == ks[:-1]], minlength=len(cu))
        union = size[a] + size[b] - shared
        out[lo:lo + chunk] = np.where(union > 0, shared / np.maximum(union, 1), 1.0)
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
    return clusters_of(sig, has, texts, params)


def clusters_of(sig: np.ndarray, has: np.ndarray, texts: pl.Series,
                params: MinHashParams) -> np.ndarray:
    """Cluster labels from signatures computed before (by partition)."""
    u, v = candidate_pairs(sig, has, params)
    if params.verify and len(u):
        keep = exact_jaccard(texts, u, v, params.shingle) >= params.threshold
        u, v = u[keep], v[keep]
    return connected_components(len(texts), u, v)
