"""Marking rows as dropped: the first reason a row gets is the one it keeps (auditable and
counted once), so later stages only look at rows that are still alive."""

from __future__ import annotations

import numpy as np
import polars as pl


def alive(df: pl.DataFrame) -> pl.Series:
    return df["drop_reason"].is_null()


def drop_where(df: pl.DataFrame, mask: pl.Series | np.ndarray, reason: str) -> pl.DataFrame:
    mask = pl.Series(np.asarray(mask, dtype=bool)) if not isinstance(mask, pl.Series) else mask
    return df.with_columns(
        drop_reason=pl.when(pl.col("drop_reason").is_null() & mask)
        .then(pl.lit(reason)).otherwise(pl.col("drop_reason")))
