"""Curriculum ordering of the kept rows.

difficulty in [0, 1] = w * (1 - confidence) + (1 - w) * (rank of rationale steps + rank of
rationale words) / 2, ranks as fractions of the kept rows (so the score is comparable across
runs of any size). Teacher disagreement is the strongest cheap signal that a problem is hard;
longer, more-step rationales are the second.

Stages: kept rows sorted by (difficulty, id) are cut into `stages` equal parts, 0 = easiest.
`mix` (optional, one share per stage) sets the composition of the training shard: the largest
set whose stage shares match the mix is kept and the surplus rows of over-full stages are
dropped with reason `curriculum_mix` (the ones with the largest ids: an arbitrary but stable
choice, since ids are content hashes). Order: stage by stage, easiest first; inside a stage rows
go by id, a fixed pseudo-random shuffle, so one source's samples are not bunched together.
"""

from __future__ import annotations

import polars as pl

from flows.curate.marks import drop_where

_STEP = r"[.!?](?:\s|$)|\n"


def _pct_rank(col: pl.Expr) -> pl.Expr:
    n = pl.len()
    return pl.when(n > 1).then((col.rank("average") - 1) / (n - 1)).otherwise(0.0)


def order(df: pl.DataFrame, *, stages: int, mix: list[float] | None,
          agreement_weight: float) -> pl.DataFrame:
    alive = df.filter(pl.col("drop_reason").is_null())
    rationale = pl.col("rationale").fill_null("")
    steps = rationale.str.count_matches(_STEP).clip(lower_bound=1)
    words = rationale.str.count_matches(r"\w+")
    scored = alive.select(
        "id",
        difficulty=(agreement_weight * (1 - pl.col("confidence"))
                    + (1 - agreement_weight) * (_pct_rank(steps) + _pct_rank(words)) / 2),
    ).sort("difficulty", "id")
    n = len(scored)
    scored = scored.with_columns(
        curriculum_stage=(pl.int_range(n, dtype=pl.Int64) * stages // max(n, 1)))
    if mix is not None and n:
        sizes = scored.group_by("curriculum_stage").len()
        size = dict(zip(sizes["curriculum_stage"].to_list(), sizes["len"].to_list()))
        total = sum(mix)
        shares = [m / total for m in mix]
        scale = min(size.get(k, 0) / s for k, s in enumerate(shares) if s > 0)
        quota = {k: int(scale * s) for k, s in enumerate(shares)}
        scored = scored.with_columns(
            _slot=pl.col("id").rank("ordinal").over("curriculum_stage").cast(pl.Int64) - 1,
            _quota=pl.col("curriculum_stage").replace_strict(quota, return_dtype=pl.Int64))
        surplus = scored.filter(pl.col("_slot") >= pl.col("_quota"))["id"]
        scored = scored.filter(pl.col("_slot") < pl.col("_quota")).drop("_slot", "_quota")
        df = drop_where(df, df["id"].is_in(surplus.implode()), "curriculum_mix")
    scored = scored.sort("curriculum_stage", "id").with_columns(
        order=pl.int_range(pl.len(), dtype=pl.Int64))
    return (df.drop("difficulty", "curriculum_stage", "order", strict=False)
            .join(scored, on="id", how="left", maintain_order="left"))
