"""Self-consistency: with n samples per question, how many agree.

Samples of the same question are the rows with the same source and the same question text: a
corpus question asked n times, or one question a teacher wrote (a disentangle reply writes
several different questions about one passage: each is voted on alone, never against the others).

`confidence` = share of a question's answered samples whose normalized answer equals this row's
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
    question = (pl.col("question") if "question" in df.columns else pl.lit(None, pl.String))
    df = df.with_columns(_answered=answered, _q=pl.concat_str(
        [pl.col("source_id"), question.fill_null("").str.strip_chars().str.to_lowercase()],
        separator="\x1f"))
    counts = (df.filter(pl.col("_answered")).group_by("_q", "_answer_norm")
              .agg(_votes=pl.len()))
    totals = counts.group_by("_q").agg(_total=pl.col("_votes").sum())
    majority = (counts.sort(["_q", "_votes", "_answer_norm"], descending=[False, True, False])
                .group_by("_q", maintain_order=True).first()
                .select("_q", _majority="_answer_norm"))
    df = (df.join(counts, on=["_q", "_answer_norm"], how="left")
          .join(totals, on="_q", how="left")
          .join(majority, on="_q", how="left")
          .with_columns(confidence=pl.when(pl.col("_answered"))
                        .then(pl.col("_votes") / pl.col("_total")).otherwise(0.0)
                        .cast(pl.Float64)))
    no_gold = pl.col("_gold_norm") == ""
    df = drop_where(df, df.select(no_gold & (pl.col("_answer_norm") != pl.col("_majority"))
                                  .fill_null(False)).to_series(), "disagrees_with_majority")
    if min_confidence > 0:
        df = drop_where(df, df["confidence"] < min_confidence, "low_confidence")
    return df.drop("_answered", "_votes", "_total", "_majority", "_q")
