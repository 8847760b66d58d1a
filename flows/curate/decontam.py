"""Decontamination: a training row that shares any word n-gram (13 by default) with an eval item
or a user-named benchmark file is dropped with reason `contaminated`.

Training text = what the student will see: the rendered messages' contents plus the rationale and
answer. Eval text = passage, question and gold answer of every held-out item. Texts shorter than n
words are compared whole (see ngrams.ngram_hashes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from flows.curate.marks import drop_where
from flows.curate.ngrams import ngram_hashes

_MESSAGES = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


def training_text(columns: list[str]) -> pl.Expr:
    parts = []
    if "messages" in columns:
        parts.append(pl.col("messages").str.json_decode(_MESSAGES)
                     .list.eval(pl.element().struct.field("content")).list.join("\n"))
    else:
        parts += [pl.col(c) for c in ("passage", "question") if c in columns]
    parts += [pl.col("rationale"), pl.col("answer")]
    return pl.concat_str([p.fill_null("") for p in parts], separator="\n")


def eval_texts(eval_rows: pl.LazyFrame) -> pl.Series:
    cols = eval_rows.collect_schema().names()
    parts = [pl.col(c).fill_null("") for c in ("passage", "question", "answer") if c in cols]
    if not parts:
        return pl.Series("text", [], pl.String)
    return eval_rows.select(pl.concat_str(parts, separator="\n").alias("text")).collect()["text"]


def benchmark_texts(path: Path) -> pl.Series:
    """Items of a user-named benchmark file: .jsonl/.json (every string value of each record),
    .parquet/.csv (every string column), anything else one item per non-empty line."""
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            items = []
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{n}: not JSON: {e.msg}") from None
                    items.append("\n".join(_strings(record)))
            return pl.Series("text", items, pl.String)
        if suffix in (".parquet", ".csv"):
            df = pl.read_parquet(path) if suffix == ".parquet" else pl.read_csv(path)
            cols = [c for c, t in df.schema.items() if t == pl.String]
            return df.select(pl.concat_str([pl.col(c).fill_null("") for c in cols],
                                           separator="\n").alias("text"))["text"]
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        return pl.Series("text", [x for x in lines if x.strip()], pl.String)
    except OSError as e:
        raise ValueError(f"benchmark file {path}: {e.strerror}") from None


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def eval_ngrams(texts: list[pl.Series], n: int) -> np.ndarray:
    """Sorted unique n-gram hashes of all eval/benchmark items."""
    grams = [ngram_hashes(t, n)[1] for t in texts if len(t)]
    return np.unique(np.concatenate(grams)) if grams else np.empty(0, np.uint64)


def curation_ngrams(eval_rows: pl.LazyFrame | None, benchmark_files: list[Path],
                    n: int) -> np.ndarray:
    """What curation decontaminates against: the held-out rows and the benchmark files (one
    function for the curate stage and `stairs preview`, so both drop the same rows)."""
    texts = [eval_texts(eval_rows)] if eval_rows is not None else []
    texts += [benchmark_texts(path) for path in benchmark_files]
    return eval_ngrams(texts, n)


def contaminated(texts: pl.Series, eval_grams: np.ndarray, n: int,
                 batch_rows: int = 100_000) -> np.ndarray:
    """Bool per text: shares at least one n-gram with the eval set (batched: bounded memory)."""
    hit = np.zeros(len(texts), dtype=bool)
    if len(eval_grams) == 0:
        return hit
    for lo in range(0, len(texts), batch_rows):
        rows, grams = ngram_hashes(texts.slice(lo, batch_rows), n)
        pos = np.searchsorted(eval_grams, grams).clip(max=len(eval_grams) - 1)
        found = eval_grams[pos] == grams
        hit[rows[found] + lo] = True
    return hit


def mark(df: pl.DataFrame, eval_grams: np.ndarray, n: int) -> pl.DataFrame:
    texts = df.select(training_text(df.columns).alias("t"))["t"]
    return drop_where(df, contaminated(texts, eval_grams, n), "contaminated")
