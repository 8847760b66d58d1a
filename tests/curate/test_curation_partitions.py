"""Curation split into partitions (per-row work per partition, then the global steps over all
rows) gives exactly the rows curating everything at once gives: the curate stage's tasks on a
task runner change where the work runs, never what it keeps."""

from __future__ import annotations

import polars as pl

from flows.curate.flow import partitions
from flows.curate.pipeline import curate_rows, finish, prepare
from flows.spec import CurationSpec
from storage.tables import Shard
from tests.helpers.curation_fixtures import corpus_rows, generated_row, planted, table, teacher_rows


def rows_with_duplicates() -> list[dict]:
    sources = corpus_rows(24, seed=5)
    rows = teacher_rows(sources, samples=3, seed=5)
    rows += [r for src in sources[:3] for r in planted(src).values()]
    # Exact and near copies of kept-looking rows, landing in other partitions than their twins.
    for k, src in enumerate(sources[:6]):
        twin = rows[k * 3]
        rows.append(generated_row(src, sample_index=50 + k, answer=twin["answer"],
                                  rationale=twin["rationale"]))
        rows.append(generated_row(src, sample_index=60 + k, answer=twin["answer"],
                                  rationale=twin["rationale"] + " That is all."))
    return rows


def test_partitioned_curation_equals_curating_everything_at_once():
    rows = pl.from_arrow(table(rows_with_duplicates()))
    cfg = CurationSpec()
    whole = curate_rows(rows.lazy(), cfg)
    parts = [prepare(rows.slice(lo, 25).lazy(), cfg) for lo in range(0, rows.height, 25)]
    assert len(parts) > 3
    split = finish(pl.concat(parts, how="diagonal_relaxed"), cfg)
    assert split.equals(whole)
    reasons = set(whole["drop_reason"].drop_nulls())
    assert {"duplicate", "near_duplicate"} <= reasons  # the global steps had work to do


def test_partitions_are_consecutive_shards_of_about_n_rows():
    shards = [Shard(run_id="r", stage_id=1, kind="generated", path=f"s{i}", rows=n, bytes=0,
                    checksum="", arrow_schema="{}") for i, n in enumerate([6, 6, 6, 6, 20, 1])]
    parts = partitions(shards, 12)
    assert [[s.path for s in p] for p in parts] == [["s0", "s1"], ["s2", "s3"], ["s4"], ["s5"]]
