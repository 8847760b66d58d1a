"""A reference model's logits, kept on disk while several files are compared with it.

The quantize stage measures each quantized file's fidelity to the float GGUF (score.logit_scores:
KL divergence and top-token agreement on every position of the eval rows). The float file's
logits are computed once, in its own perplexity pass (`recording`), and each quantized file
reads them back instead of running the float file again: in the quickstart that was 120 of a
round's 300 logits passes, 0.13 s each. On disk rather than in memory because 60 rows of 100
tokens over a 49k vocabulary are 1.2 GB. Stored as float32, which is what both engines return,
so the numbers read back are the same bits.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np


def _key(ids: list[int]) -> str:
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:32]


class SavedLogits:
    """`logits(ids)` from `folder` when a recording engine saved them there, else from the
    engine `fallback()` opens (once, on the first miss)."""

    def __init__(self, folder: Path, fallback: Callable[[], object] | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fallback = fallback
        self._engine = None
        self.hits = self.misses = 0

    def recording(self, engine) -> "_Recording":
        """`engine`, with each logits() it computes also saved here."""
        return _Recording(engine, self)

    def save(self, ids: list[int], logits: np.ndarray) -> None:
        narrow = np.asarray(logits, dtype=np.float32)
        if narrow is not logits and not np.array_equal(narrow, logits):
            return  # wider than float32: keep it exact, or not at all
        path = self.folder / f"{_key(ids)}.npy"
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, narrow)
        tmp.replace(path)

    def logits(self, ids: list[int]) -> np.ndarray:
        path = self.folder / f"{_key(ids)}.npy"
        if path.exists():
            self.hits += 1
            return np.load(path)
        if self._fallback is None:
            raise KeyError(f"no saved logits for a {len(ids)}-token sequence in {self.folder}")
        self.misses += 1
        if self._engine is None:
            self._engine = self._fallback()
        return self._engine.logits(ids)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


class _Recording:
    """An engine whose logits() also go into a SavedLogits; everything else is the engine's."""

    def __init__(self, engine, saved: SavedLogits):
        self._engine, self._saved = engine, saved

    def logits(self, ids):
        out = self._engine.logits(ids)
        self._saved.save(ids, out)
        return out

    def __getattr__(self, name):
        return getattr(self._engine, name)
