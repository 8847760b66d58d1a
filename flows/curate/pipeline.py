"""The curation pipeline over generated rows: filters -> decontamination -> self-consistency ->
exact dedup -> near dedup -> (semantic dedup) -> (rows per question cap) -> curriculum. Every
row comes out, kept or with the first reason it was dropped; see flows/curate/flow.py for the
stage that reads and writes shards.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from flows.curate import consistency, curriculum, decontam, dedup, filters, reviews
from flows.curate.answers import normalized
from flows.curate.minhash import MinHashParams

# Columns of the generated-rows contract that curation reads.
REQUIRED = ["id", "source_id", "rationale", "answer", "error"]
TEXT_COLUMNS = ["id", "source_id", "passage", "gold_answer", "question", "rationale", "answer",
                "error", "messages", "facts", "prompt", "target"]
OUTPUT_COLUMNS = {"keep": pl.Boolean, "drop_reason": pl.String, "dedup_cluster": pl.String,
                  "confidence": pl.Float64, "difficulty": pl.Float64,
                  "curriculum_stage": pl.Int64, "order": pl.Int64}


def minhash_params(cfg) -> MinHashParams:
    nd = cfg.near_dedup
    return MinHashParams(shingle=nd.shingle, permutations=nd.permutations, bands=nd.bands,
                         rows=nd.rows, threshold=nd.threshold, seed=nd.seed,
                         scheme=nd.scheme)


def check_columns(columns: list[str]) -> None:
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ValueError(f"generated rows lack column(s) {missing}: not the generate contract")


# What `on_step` is called with: prepared (filters, decontamination lookups, signatures), then
# self-consistency, exact, near and semantic dedup, curriculum order.
STEPS = 6


def curate_rows(generated: pl.LazyFrame, cfg, *, eval_grams: np.ndarray | None = None,
                verified: pl.DataFrame | None = None, judged: pl.DataFrame | None = None,
                on_step=lambda name: None) -> pl.DataFrame:
    """All generated rows plus the curation columns (see docs/contracts.md 'Curated rows');
    `verified` / `judged`: the generate stage's review passes, joined on first. `on_step(name)`
    is called after each of the STEPS steps (a progress bar)."""
    df = prepare(generated, cfg, eval_grams=eval_grams, verified=verified, judged=judged)
    on_step("filters")
    return finish(df, cfg, on_step=on_step)


def prepare(generated: pl.LazyFrame, cfg, *, eval_grams: np.ndarray | None = None,
            verified: pl.DataFrame | None = None,
            judged: pl.DataFrame | None = None) -> pl.DataFrame:
    """The work each row needs alone, so it runs per partition of the rows (a task each, on
    the flow's task runner): review joins, filters, answer normalization, decontamination
    lookups, MinHash signatures. `finish` does the rest over all partitions together."""
    check_columns(generated.collect_schema().names())
    generated = reviews.attach(generated, verified, judged)
    columns = generated.collect_schema().names()
    missing = [f for f in cfg.dedup_fields if f not in columns]
    if missing:
        raise ValueError(f"curation.dedup_fields: generated rows have no column(s) {missing}")
    # Rows built in memory may carry all-null text columns typed Null; shards never do.
    text = [c for c in TEXT_COLUMNS if c in columns]
    generated = generated.with_columns(pl.col(c).cast(pl.String) for c in text)
    gold = normalized("gold_answer") if "gold_answer" in columns else pl.lit("")
    df = (generated
          .with_columns(drop_reason=filters.drop_reason(cfg, columns),
                        _answer_norm=normalized("answer"), _gold_norm=gold,
                        dedup_cluster=pl.lit(None, pl.String))
          .collect())
    if eval_grams is not None and cfg.decontaminate.enabled:
        df = decontam.mark(df, eval_grams, cfg.decontaminate.ngram)
    if cfg.near_dedup.enabled:
        df = dedup.with_signatures(df, cfg.dedup_fields, minhash_params(cfg))
    return df


def finish(df: pl.DataFrame, cfg, *, on_step=lambda name: None) -> pl.DataFrame:
    """The steps that need every row at once: id check, self-consistency votes, exact, near and
    semantic dedup clustering, curriculum order."""
    dup_ids = df.filter(pl.col("id").is_duplicated())["id"].unique()
    if len(dup_ids):
        raise ValueError(f"generated rows repeat id {dup_ids[0]!r} ({len(dup_ids)} ids repeat): "
                         "each generated row needs its own id")
    df = consistency.vote(df, min_confidence=cfg.min_confidence)
    on_step("self-consistency")
    if cfg.exact_dedup:
        df = dedup.exact(df, cfg.dedup_fields)
    on_step("exact dedup")
    if cfg.near_dedup.enabled:
        df = dedup.near(df, cfg.dedup_fields, minhash_params(cfg))
    on_step("near dedup")
    if cfg.semantic_dedup_threshold is not None:
        df = dedup.semantic(df, cfg.dedup_fields, cfg.semantic_dedup_threshold)
    if cfg.max_rows_per_question is not None:
        # After dedup, so a duplicate never takes a kept row's place.
        df = consistency.cap(df, cfg.max_rows_per_question)
    on_step("semantic dedup")
    cur = cfg.curriculum
    df = curriculum.order(df, stages=cur.stages, mix=cur.mix,
                          agreement_weight=cur.agreement_weight)
    on_step("curriculum order")
    df = df.with_columns(keep=pl.col("drop_reason").is_null())
    df = df.drop([c for c in df.columns if c.startswith("_")])
    return df.with_columns([pl.col(c).cast(t) for c, t in OUTPUT_COLUMNS.items()])


def drops_by_reason(df: pl.DataFrame) -> dict[str, int]:
    counts = (df.filter(pl.col("drop_reason").is_not_null()).group_by("drop_reason").len()
              .sort(["len", "drop_reason"], descending=[True, False]))
    return dict(zip(counts["drop_reason"].to_list(), counts["len"].to_list()))
