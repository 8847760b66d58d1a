"""Word n-gram hashes for many texts at once: the shared primitive of repetition checks, MinHash
shingles and decontamination.

Words are lowercase `\\w+` runs (punctuation and spacing never make two texts differ). Polars
tokenizes and hashes the words in Rust; NumPy folds each run of n word hashes into one 64-bit
n-gram hash with a polynomial (order-sensitive, wraps mod 2^64). Hash values are stable within
one Polars version, which is all dedup and decontamination need: both sides are hashed by the
same process.
"""

from __future__ import annotations

import numpy as np
import polars as pl

WORD = r"\w+"
# Odd 64-bit multiplier (a Knuth-style golden-ratio constant) for the rolling n-gram polynomial.
_POLY = np.uint64(0x9E3779B97F4A7C15)
_SEED = 0x5EED


def words(texts: pl.Expr) -> pl.Expr:
    return texts.fill_null("").str.to_lowercase().str.extract_all(WORD)


def word_hashes(texts: pl.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row of each word, u64 hash of each word, words per row), rows in input order."""
    lists = pl.DataFrame({"t": texts}).select(w=words(pl.col("t")))
    counts = lists["w"].list.len().fill_null(0).to_numpy().astype(np.int64)
    flat = lists["w"].explode().drop_nulls()
    hashes = flat.hash(seed=_SEED).to_numpy()
    rows = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return rows, hashes, counts


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
            g *= _POLY
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
        sg[present] = sg[present] * _POLY + h[idx]
    all_rows = np.concatenate([full_rows, short])
    all_g = np.concatenate([full, sg])
    order = np.argsort(all_rows, kind="stable")
    return all_rows[order], all_g[order]
