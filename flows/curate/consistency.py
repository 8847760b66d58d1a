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

`cap` keeps at most k surviving rows per question: with n samples per question an easy
question yields up to n right rows and a hard one none or one, so without a cap the easy
levels fill the training set (the climb's 8-sample retry kept 196 one-two rows for 56
one-three; docs/results.md).
"""

from __future__ import annotations

import polars as pl

from flows.curate.marks import drop_where
from flows.prompting.hints import RATIONALIZE_TEMPLATE


def _question_key(df: pl.DataFrame) -> pl.Expr:
    question = (pl.col("question") if "question" in df.columns else pl.lit(None, pl.String))
    return pl.concat_str([pl.col("source_id"),
                          question.fill_null("").str.strip_chars().str.to_lowercase()],
                         separator="\x1f")


def vote(df: pl.DataFrame, *, min_confidence: float = 0.0) -> pl.DataFrame:
    answered = (pl.col("_answer_norm") != "") & pl.col("error").is_null()
    df = df.with_columns(_answered=answered, _q=_question_key(df))
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


def cap(df: pl.DataFrame, per_question: int) -> pl.DataFrame:
    """Drop surviving rows beyond `per_question` per question as extra_sample: a teacher's own
    samples before rationalized ones (those saw the answer), then the most agreeing, then by
    id (deterministic)."""
    hinted = (pl.col("template") == RATIONALIZE_TEMPLATE if "template" in df.columns
              else pl.lit(False))
    ranked = (df.with_columns(_row=pl.int_range(pl.len()), _q=_question_key(df),
                              _hinted=hinted.fill_null(False))
              .filter(pl.col("drop_reason").is_null())
              .sort("_hinted", "confidence", "id", descending=[False, True, False])
              .with_columns(_rank=pl.int_range(pl.len()).over("_q")))
    extra = ranked.filter(pl.col("_rank") >= per_question)["_row"]
    return drop_where(df, pl.int_range(len(df), eager=True).is_in(extra.implode()),
                      "extra_sample")
