"""Word n-gram hashes for many texts at once: the shared primitive of repetition checks, MinHash
shingles and decontamination.

Why not Polars' `str.extract_all(r"\w+")`: measured here it tokenizes about 20 MB/s and was
most of the dedup time. Instead the texts' UTF-8 bytes (Arrow's buffer, no copy) are tokenized
and hashed in a handful of NumPy passes: a word is a run of ASCII letters, digits or '_' or of
any non-ASCII bytes (so accented and non-Latin words stay whole), ASCII is lowercased, and each
word's hash is a polynomial over its bytes computed with prefix sums (mod 2^64), then mixed with
the murmur3 finalizer. N-gram hashes fold n consecutive word hashes the same way. Punctuation,
spacing and ASCII case never make two texts differ.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

# Odd 64-bit multiplier (golden-ratio constant) for the polynomials; odd, so invertible mod 2^64.
POLY = np.uint64(0x9E3779B97F4A7C15)
POLY_INV = np.uint64(pow(0x9E3779B97F4A7C15, -1, 2**64))
_WORD_BYTE = np.zeros(256, dtype=bool)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
    _WORD_BYTE[_c] = True
_WORD_BYTE[0x80:] = True
_LOWER = np.arange(256, dtype=np.uint64)
_LOWER[ord("A"):ord("Z") + 1] += 32


def fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer: every input bit affects every output bit (in place)."""
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xFF51AFD7ED558CCD)
    x ^= x >> np.uint64(33)
    x *= np.uint64(0xC4CEB9FE1A85EC53)
    x ^= x >> np.uint64(33)
    return x


_CHUNK_BYTES = 1 << 22  # tokenize at most this many bytes at once: bounded temporary arrays
_POWER_CACHE: dict[int, np.ndarray] = {}


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """base^0 .. base^(n-1) mod 2^64 (cached: every chunk needs the same prefix). Built as an
    outer product of two short cumulative products: one multiply pass instead of a long,
    serial cumprod."""
    key = int(base)
    cached = _POWER_CACHE.get(key)
    if cached is None or len(cached) < n:
        size = 1 << max(12, (n - 1).bit_length())
        width = 1 << ((size.bit_length() - 1) // 2)
        low = np.full(width, base, dtype=np.uint64)
        low[0] = 1
        low = np.cumprod(low, dtype=np.uint64)
        step = np.full(size // width, int(low[-1]) * key % 2**64, dtype=np.uint64)
        step[0] = 1
        high = np.cumprod(step, dtype=np.uint64)
        cached = _POWER_CACHE[key] = np.multiply.outer(high, low).ravel()
    return cached[:n]


def _utf8(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets) of the texts, nulls as empty strings."""
    arr = texts.cast(pl.String).fill_null("").to_arrow()
    arr = arr.cast(pa.large_string()) if not pa.types.is_large_string(arr.type) else arr
    arr = pa.concat_arrays(arr.chunks) if isinstance(arr, pa.ChunkedArray) else arr
    _, offs, data = arr.buffers()
    offsets = np.frombuffer(offs, dtype=np.int64)[arr.offset:arr.offset + len(arr) + 1]
    raw = np.frombuffer(data, dtype=np.uint8) if data is not None else np.empty(0, np.uint8)
    return raw[offsets[0]:offsets[-1]], offsets - offsets[0]


def word_hashes(texts: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row of each word, u64 hash of each word, words per row), rows in input order."""
    data, offsets = _utf8(texts)
    n_rows = len(offsets) - 1
    rows, hashes = [], []
    lo = 0
    while lo < n_rows:
        # rows [lo, hi) hold at most _CHUNK_BYTES bytes (or one longer row)
        hi = int(np.searchsorted(offsets, offsets[lo] + _CHUNK_BYTES, side="right")) - 1
        hi = min(max(hi, lo + 1), n_rows)
        r, h = _tokenize(data[offsets[lo]:offsets[hi]], offsets[lo:hi + 1] - offsets[lo])
        rows.append(r + lo)
        hashes.append(h)
        lo = hi
    row = np.concatenate(rows) if rows else np.empty(0, np.int64)
    h = np.concatenate(hashes) if hashes else np.empty(0, np.uint64)
    return row, h, np.bincount(row, minlength=n_rows).astype(np.int64)


def _tokenize(data: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(data) == 0:
        return np.empty(0, np.int64), np.empty(0, np.uint64)
    word = _WORD_BYTE[data]
    # A word starts where a word byte follows a non-word byte or a text boundary, and ends
    # likewise; a word never runs from one text into the next.
    prev = np.empty_like(word)
    prev[0] = False
    prev[1:] = word[:-1]
    prev[offsets[:-1][offsets[:-1] < len(data)]] = False
    nxt = np.empty_like(word)
    nxt[-1] = False
    nxt[:-1] = word[1:]
    nxt[offsets[1:][offsets[1:] > 0] - 1] = False
    starts = np.flatnonzero(word & ~prev)
    ends = np.flatnonzero(word & ~nxt)
    # hash(word) = sum_k b_k * P^(end-k): prefix sums of b_k * P^-k, rescaled by P^end.
    g = _LOWER[data]
    g *= _powers(POLY_INV, len(data))
    np.cumsum(g, dtype=np.uint64, out=g)
    before = np.where(starts > 0, g[np.maximum(starts - 1, 0)], np.uint64(0))
    h = fmix64((g[ends] - before) * _powers(POLY, len(data))[ends])
    per_row = np.diff(np.searchsorted(starts, offsets))
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), per_row), h


def ngram_hashes(texts: pl.Series, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, u64 hash) of every word n-gram of every text, grouped by row in input order.

    A text with fewer than n words (but at least one) gives a single gram over all its words,
    so short items still compare with each other; an empty text gives none.
    """
    rows, h, counts = word_hashes(texts)
    if len(h) == 0:
        return rows, h
    m = len(h) - n + 1
    if m > 0:
        g = h[:m].copy()
        for k in range(1, n):
            g *= POLY
            g += h[k:k + m]
        valid = rows[:m] == rows[n - 1:]
        full_rows, full = rows[:m][valid], g[valid]
    else:
        full_rows, full = rows[:0], h[:0]
    short = np.flatnonzero((counts > 0) & (counts < n))
    if len(short) == 0:
        return full_rows, full
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sg = np.zeros(len(short), dtype=np.uint64)
    for k in range(n - 1):  # fold up to n-1 words; rows shorter than that stop early
        present = k < counts[short]
        idx = starts[short][present] + k
        sg[present] = sg[present] * POLY + h[idx]
    all_rows = np.concatenate([full_rows, short])
    all_g = np.concatenate([full, sg])
    order = np.argsort(all_rows, kind="stable")
    return all_rows[order], all_g[order]
