"""Self-consistency: with n samples per source question, how many agree.

`confidence` = share of a source's answered samples whose normalized answer equals this row's
(1.0 for a lone sample, 0.0 for a row with no answer). Where a row has a gold answer the gold
filter already decides correctness (STaR keeps a correct minority rationale; its low confidence
then marks it as hard). Where there is no gold answer, the majority vote decides: rows that
disagree with their source's most common answer are dropped (ties go to the smallest normalized
answer, so the vote is deterministic).
"""

from __future__ import annotations

import polars as pl

from flows.curate.marks import drop_where


def vote(df: pl.DataFrame, *, min_confidence: float = 0.0) -> pl.DataFrame:
    answered = (pl.col("_answer_norm") != "") & pl.col("error").is_null()
    df = df.with_columns(_answered=answered)
    counts = (df.filter(pl.col("_answered")).group_by("source_id", "_answer_norm")
              .agg(_votes=pl.len()))
    totals = counts.group_by("source_id").agg(_total=pl.col("_votes").sum())
    majority = (counts.sort(["source_id", "_votes", "_answer_norm"], descending=[False, True, False])
                .group_by("source_id", maintain_order=True).first()
                .select("source_id", _majority="_answer_norm"))
    df = (df.join(counts, on=["source_id", "_answer_norm"], how="left")
          .join(totals, on="source_id", how="left")
          .join(majority, on="source_id", how="left")
          .with_columns(confidence=pl.when(pl.col("_answered"))
                        .then(pl.col("_votes") / pl.col("_total")).otherwise(0.0)
                        .cast(pl.Float64)))
    no_gold = pl.col("_gold_norm") == ""
    df = drop_where(df, df.select(no_gold & (pl.col("_answer_norm") != pl.col("_majority"))
                                  .fill_null(False)).to_series(), "disagrees_with_majority")
    if min_confidence > 0:
        df = drop_where(df, df["confidence"] < min_confidence, "low_confidence")
    return df.drop("_answered", "_votes", "_total", "_majority")
