"""The generate stage's review passes joined onto its rows (flows/generate/review.py writes them):

- verified (re-answers of teacher-written questions): `verify_total` = re-answers asked,
  `verify_agreement` = share of them whose normalized answer equals the row's. The row passes
  verification when a strict majority agrees (> 0.5); rows nobody re-asked (null) are not
  judged by it (their gold answer, when they have one, decides instead).
- judged: `judge_score` (mean over the judge's samples) and `judge_reason` (the first one).
"""

from __future__ import annotations

import polars as pl

from flows.curate.answers import normalize_answers, normalized

VERIFY_MAJORITY = 0.5  # agreement must exceed this share of the re-answers


def attach(generated: pl.LazyFrame, verified: pl.DataFrame | None,
           judged: pl.DataFrame | None) -> pl.LazyFrame:
    if verified is not None and len(verified):
        answers = verified.filter(pl.col("error").is_null()).select(
            "row_id", _vnorm=normalize_answers(verified.filter(pl.col("error").is_null())["answer"]))
        agree = answers.filter(pl.col("_vnorm") != "").group_by("row_id", "_vnorm").agg(
            _agree=pl.len())
        totals = verified.group_by("row_id").agg(verify_total=pl.len().cast(pl.Int64))
        generated = (generated.with_columns(_vnorm=normalized("answer"))
                     .join(agree.lazy(), left_on=["id", "_vnorm"], right_on=["row_id", "_vnorm"],
                           how="left")
                     .join(totals.lazy(), left_on="id", right_on="row_id", how="left")
                     .with_columns(verify_agreement=pl.when(pl.col("verify_total").is_not_null())
                                   .then(pl.col("_agree").fill_null(0) / pl.col("verify_total"))
                                   .cast(pl.Float64))
                     .drop("_vnorm", "_agree"))
    if judged is not None and len(judged):
        scores = (judged.sort("row_id", "sample_index").group_by("row_id", maintain_order=True)
                  .agg(judge_score=pl.col("score").cast(pl.Float64).mean(),
                       judge_reason=pl.col("reason").drop_nulls().first()))
        generated = generated.join(scores.lazy(), left_on="id", right_on="row_id", how="left")
    return generated
