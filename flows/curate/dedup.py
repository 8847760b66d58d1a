"""Exact, near and (optional) semantic dedup over the rows still alive.

Keep rule, the same for every kind of cluster: the row with the highest confidence (teacher
agreement), then the highest judge score when there is one, then the smallest id. Everyone else
in the cluster is dropped (reason `duplicate`, `near_duplicate` or `semantic_duplicate`), and every
member of a cluster of two or more, the kept row included, records the kept row's id in
`dedup_cluster`, so an audit can see what each drop was a copy of.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from flows.curate.marks import drop_where
from flows.curate.minhash import (
    MinHashParams,
    clusters_of,
    connected_components,
    near_duplicate_clusters,
    signatures,
)


def dedup_text(fields: list[str]) -> pl.Expr:
    """Normalized text: lowercase words separated by single spaces (punctuation, case and spacing
    never make two rows different)."""
    joined = pl.concat_str([pl.col(f).fill_null("") for f in fields], separator="\n")
    return joined.str.to_lowercase().str.replace_all(r"[^\w]+", " ").str.strip_chars()


def _keep_order(df: pl.DataFrame) -> list[pl.Expr]:
    keys = [pl.col("confidence").fill_null(0.0).neg()]
    if "judge_score" in df.columns:
        keys.append(pl.col("judge_score").cast(pl.Float64).fill_null(float("-inf")).neg())
    return keys + [pl.col("id")]


def resolve(df: pl.DataFrame, group: pl.Series, reason: str) -> pl.DataFrame:
    """`group` labels the alive rows (null for dead rows): drop all but the best of each group."""
    work = df.with_columns(_group=group, _pos=pl.int_range(pl.len()))
    ranked = (work.filter(pl.col("_group").is_not_null())
              .sort(_keep_order(work))
              .group_by("_group", maintain_order=True)
              .agg(_rep=pl.col("id").first(), _members=pl.col("_pos"), _size=pl.len())
              .filter(pl.col("_size") > 1)
              .explode("_members")
              .select(_pos="_members", _rep="_rep"))
    work = work.join(ranked, on="_pos", how="left", maintain_order="left")
    dup = (work["_rep"].is_not_null() & (work["_rep"] != work["id"])).fill_null(False)
    work = work.with_columns(dedup_cluster=pl.coalesce("dedup_cluster", "_rep"))
    return drop_where(work, dup, reason).drop("_group", "_pos", "_rep")


def exact(df: pl.DataFrame, fields: list[str]) -> pl.DataFrame:
    key = df.select(pl.when(pl.col("drop_reason").is_null()).then(dedup_text(fields)))
    return resolve(df, key.to_series(), "duplicate")


def _alive_labels(df: pl.DataFrame, labels_of_alive: np.ndarray) -> pl.Series:
    idx = np.flatnonzero(df["drop_reason"].is_null().to_numpy())
    full = np.full(len(df), -1, dtype=np.int64)
    full[idx] = idx[labels_of_alive]
    return pl.Series("_g", full).replace(-1, None)


def with_signatures(df: pl.DataFrame, fields: list[str], params: MinHashParams) -> pl.DataFrame:
    """MinHash signatures of the rows alive so far, as columns `_sig` and `_has` (null for the
    others): a text's signature depends on nothing else, so partitions compute their own and
    `near` only clusters them."""
    alive = df["drop_reason"].is_null()
    texts = df.filter(alive).select(dedup_text(fields)).to_series()
    sig, has = signatures(texts, params)
    idx = np.flatnonzero(alive.to_numpy())
    full = np.zeros((len(df), params.permutations), dtype=np.uint32)
    full[idx] = sig
    present = np.zeros(len(df), dtype=bool)
    present[idx] = True
    flags = np.zeros(len(df), dtype=bool)
    flags[idx] = has
    return df.with_columns(
        _sig=pl.Series(full).cast(pl.Array(pl.UInt32, params.permutations)),
        _has=pl.Series(flags)).with_columns(
        _sig=pl.when(pl.Series(present)).then(pl.col("_sig")),
        _has=pl.when(pl.Series(present)).then(pl.col("_has")))


def near(df: pl.DataFrame, fields: list[str], params: MinHashParams) -> pl.DataFrame:
    alive = df.filter(pl.col("drop_reason").is_null())
    texts = alive.select(dedup_text(fields)).to_series()
    if "_sig" in df.columns:  # signed by `with_signatures` (per partition)
        sig = alive["_sig"].to_numpy().astype(np.uint32, copy=False).reshape(
            len(alive), params.permutations)
        labels = clusters_of(sig, alive["_has"].to_numpy().astype(bool), texts, params)
    else:
        labels = near_duplicate_clusters(texts, params)
    return resolve(df, _alive_labels(df, labels), "near_duplicate")


def semantic(df: pl.DataFrame, fields: list[str], threshold: float, *,
             batch: int = 2048) -> pl.DataFrame:
    from flows.curate.semantic import embed

    texts = df.filter(pl.col("drop_reason").is_null()).select(
        pl.concat_str([pl.col(f).fill_null("") for f in fields], separator="\n")).to_series()
    emb = embed(texts.to_list())
    us, vs = [], []
    for lo in range(0, len(emb), batch):  # blocks of the cosine matrix: memory stays bounded
        sims = emb[lo:lo + batch] @ emb.T
        i, j = np.nonzero(sims >= threshold)
        i = i + lo
        keep = i < j
        us.append(i[keep])
        vs.append(j[keep])
    u = np.concatenate(us) if us else np.empty(0, np.int64)
    v = np.concatenate(vs) if vs else np.empty(0, np.int64)
    labels = connected_components(len(emb), u, v)
    return resolve(df, _alive_labels(df, labels), "semantic_duplicate")
