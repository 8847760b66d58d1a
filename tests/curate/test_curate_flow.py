"""The curate stage end to end in a workspace: real ingest of the demo corpus, a generate stage
holding contract-shaped rows (tests/curation_fixtures.py), then `curate` (no Prefect server)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from flows import spec as spec_mod
from flows.curate import CurateError, curate, latest_run_with
from flows.curate.check import check_curation
from flows.ingest import ingest
from flows.preflight import load_checked
from flows.runinfo import run_details
from tests.helpers.curation_fixtures import planted, teacher_rows, write_generate_stage

CURRICULUM = """
name: curate-test
corpus:
  format: demo
  demo: {rows: 120, seed: 0}
  eval_fraction: 0.25
curation:
  decontaminate: {benchmarks: [bench.txt]}
"""


def ingested(tmp_path, workspace, benchmark: str):
    """CURRICULUM's corpus ingested in a new run: (spec, run id, corpus rows, eval rows)."""
    (tmp_path / "bench.txt").write_text(benchmark + "\n")
    path = tmp_path / "c.yaml"
    path.write_text(CURRICULUM)
    spec = spec_mod.load(path)
    run_id = workspace.start_run(spec, "run").id
    ingest(spec, workspace, run_id)
    st = workspace.latest_stage("ingest", run_id=run_id)
    corpus = workspace.store.scan(workspace.shards(st, "corpus")).collect().to_dicts()
    evals = workspace.store.scan(workspace.shards(st, "eval")).collect().to_dicts()
    return spec, run_id, corpus, evals


@pytest.fixture
def setup(tmp_path, workspace):
    spec, run_id, corpus, evals = ingested(
        tmp_path, workspace,
        "an unrelated benchmark item that is long enough to have thirteen words in it at least")
    rows = teacher_rows(corpus, samples=3, p_correct=0.7, seed=1)
    for bad in planted(corpus[0]).values():
        rows.append(bad)
    # A training row that quotes a held-out passage: must end up `contaminated`.
    good = next(r for r in rows if r["answer"] == r["gold_answer"])
    leak = dict(good, id="leaky-row", rationale=evals[0]["passage"] + " " + good["rationale"])
    rows.append(leak)
    write_generate_stage(workspace, run_id, rows)
    return spec, run_id, rows


def test_curate_writes_kept_dropped_train_with_lineage(setup, workspace):
    spec, run_id, rows = setup
    summary = curate(spec, workspace, run_id)
    assert summary.kept + summary.dropped == len(rows) == summary.generated
    assert sum(summary.drops_by_reason.values()) == summary.dropped
    for reason in planted({"id": "x", "passage": "p. q", "question": "q", "answer": "1"}):
        assert summary.drops_by_reason.get(reason, 0) >= 1, reason
    assert summary.drops_by_reason["contaminated"] >= 1

    stage = workspace.latest_stage("curate", run_id=run_id, round_index=0)
    store = workspace.store
    kept = store.scan(workspace.shards(stage, "kept")).collect()
    dropped = store.scan(workspace.shards(stage, "dropped")).collect()
    train = store.scan(workspace.shards(stage, "train")).collect()
    assert len(kept) == summary.kept and len(dropped) == summary.dropped
    assert kept["keep"].all() and not dropped["keep"].any()
    assert dropped["drop_reason"].null_count() == 0 and kept["drop_reason"].null_count() == len(kept)
    assert "leaky-row" in set(dropped.filter(pl.col("drop_reason") == "contaminated")["id"])
    assert train["order"].to_list() == list(range(len(train)))
    assert sorted(train["id"]) == sorted(kept["id"])
    for col, dtype in {"keep": pl.Boolean, "drop_reason": pl.String, "dedup_cluster": pl.String,
                       "confidence": pl.Float64, "difficulty": pl.Float64,
                       "curriculum_stage": pl.Int64, "order": pl.Int64}.items():
        assert train.schema[col] == dtype
    # lineage: kept/dropped come from the generated (and eval) shards, train from kept
    gen = workspace.latest_stage("generate", run_id=run_id, round_index=0)
    gen_ids = {s.id for s in workspace.shards(gen, "generated")}
    kept_shard = workspace.shards(stage, "kept")[0]
    assert gen_ids <= {p.id for p in workspace.catalog.shard_parents(kept_shard.id)}
    train_shard = workspace.shards(stage, "train")[0]
    assert [p.id for p in workspace.catalog.shard_parents(train_shard.id)] == [kept_shard.id]
    # `stairs show RUN --json` counts drops by reason
    details = run_details(workspace, run_id)
    assert details["rejects_by_reason"]["contaminated"] == summary.drops_by_reason["contaminated"]


def test_curate_reuses_identical_work(setup, workspace):
    spec, run_id, _ = setup
    first = curate(spec, workspace, run_id)
    again = curate(spec, workspace, run_id)
    assert again == first
    assert len([s for s in workspace.catalog.stages(run_id) if s.name == "curate"]) == 1


def test_curate_without_generated_rows_says_what_to_run(tmp_path, workspace):
    path = tmp_path / "c.yaml"
    path.write_text(CURRICULUM.replace("curation:\n  decontaminate: {benchmarks: [bench.txt]}\n", ""))
    spec = spec_mod.load(path)
    run_id = workspace.start_run(spec, "run").id
    with pytest.raises(CurateError, match="no completed generate stage for round 0"):
        curate(spec, workspace, run_id)
    assert latest_run_with(workspace, spec.name, "generate") is None


def test_validate_names_a_missing_benchmark_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(CURRICULUM)
    with pytest.raises(spec_mod.SpecError, match=r"curation.decontaminate.benchmarks\[0\]: file not found"):
        load_checked(path)


def test_unknown_curation_key_is_an_error(tmp_path):
    path = tmp_path / "c.yaml"
    (tmp_path / "bench.txt").write_text("x\n")
    path.write_text(CURRICULUM + "  near_dedup: {shingles: 4}\n")
    with pytest.raises(spec_mod.SpecError, match="near_dedup.shingles: unknown key"):
        spec_mod.load(path)


def test_bad_generated_rows_name_the_problem(setup, workspace):
    spec, run_id, rows = setup
    write_generate_stage(workspace, run_id, rows + [dict(rows[0])])  # same id twice
    with pytest.raises(ValueError, match="repeat id"):
        curate(spec, workspace, run_id)
    stage = [s for s in workspace.catalog.stages(run_id) if s.name == "curate"][-1]
    assert stage.status == "failed" and "repeat id" in stage.error
    assert check_curation(spec) == []
    json.dumps(run_details(workspace, run_id), default=str)


def test_numbers_a_passage_writes_as_words_support_a_rationale_through_curate(tmp_path,
                                                                                workspace):
    """Through the curate stage: a right rationale computing with numbers its passage wrote as
    words is kept; one computing with a number from nowhere is still `unsupported_number`."""
    from tests.helpers.curation_fixtures import generated_row

    spec, run_id, corpus, _ = ingested(tmp_path, workspace, "an unrelated benchmark item")
    words = dict(corpus[1], passage="Vorla has three red kites and five blue kites.",
                 question="How many kites does Vorla have in total?", answer="8")
    nowhere = dict(corpus[2], passage="Kesi has two cats and four dogs.",
                   question="How many pets does Kesi have?", answer="6")
    rows = [generated_row(words, sample_index=0, answer="8",
                          rationale="Vorla has three red and five blue kites. 3 + 5 = 8."),
            generated_row(nowhere, sample_index=0, answer="6",
                          rationale="Kesi has two cats and four dogs. 2 + 4 + 3 = 9. 9 - 3 = 6.")]
    write_generate_stage(workspace, run_id, rows)
    curate(spec, workspace, run_id)
    stage = workspace.latest_stage("curate", run_id=run_id, round_index=0)
    kept = workspace.store.scan(workspace.shards(stage, "kept")).collect()
    dropped = workspace.store.scan(workspace.shards(stage, "dropped")).collect()
    assert kept["id"].to_list() == [rows[0]["id"]]
    assert dropped.select("id", "drop_reason").rows() == [(rows[1]["id"], "unsupported_number")]
