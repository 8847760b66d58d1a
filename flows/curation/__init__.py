"""Curation: decide which generated rows the student sees, and in what order.

Modules, one idea each: answers (vectorized answer normalization), ngrams (word n-gram hashes),
filters (named per-row drop reasons), consistency (self-consistency vote and confidence),
decontam (eval n-gram overlap), minhash (MinHash + LSH near-duplicate clusters), dedup (exact,
near, semantic; keep rule), curriculum (difficulty, stages, order), pipeline (all of it in order).
"""

from flows.curation.pipeline import curate_rows, drops_by_reason

__all__ = ["curate_rows", "drops_by_reason"]
