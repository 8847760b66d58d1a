"""Artifact helpers: keys Prefect accepts, throttled progress, the run report. Outside a flow run
they publish nothing (the integration tests check what a real server receives)."""

from __future__ import annotations

import pytest

from flows import artifacts
from flows.artifacts import Progress, artifact_key, counts_table, run_report_markdown


@pytest.mark.parametrize("parts,key", [
    (("ingest", "Quick_Start", "rejects"), "ingest-quick-start-rejects"),
    (("generate", None, "progress"), "generate-progress"),
    (("stairs", "a..b", "", 3), "stairs-a-b-3"),
    (("***",), "stairs"),
])
def test_artifact_keys(parts, key):
    assert artifact_key(*parts) == key


def test_helpers_are_no_ops_outside_a_flow_run():
    assert artifacts.table("t", [{"a": 1}]) is None
    assert artifacts.markdown("m", "# hi") is None
    bar = Progress("p", total=3)
    assert bar.artifact_id is None
    bar.advance(2)
    assert bar.percent == pytest.approx(66.67)
    bar.advance(5)  # never past the total
    assert bar.done == 3 and bar.percent == 100.0
    assert Progress("empty", total=0).percent == 100.0


def test_counts_table_largest_first():
    assert counts_table({"a": 1, "b": 5}) == [{"reason": "b", "rows": 5},
                                              {"reason": "a", "rows": 1}]


def test_run_report_from_a_real_run(workspace, tmp_path):
    from flows.ingest import ingest
    from flows.runinfo import run_details
    from flows.spec import load

    path = tmp_path / "r.yaml"
    path.write_text("name: r\ncorpus:\n  format: demo\n  demo: {rows: 12}\n")
    spec = load(path)
    run = workspace.start_run(spec, "run")
    ingest(spec, workspace, run.id)
    workspace.catalog.finish_run(run.id)
    workspace.catalog.log_metric("accuracy", 0.25, run_id=run.id, round_index=0, split="eval")
    details = run_details(workspace, run.id)
    text = run_report_markdown(details)
    assert f"# Run `{run.id}`" in text
    # The stage's wall seconds, from its start and finish in the catalog.
    stage = workspace.latest_stage("ingest", run_id=run.id)
    secs = details["stages"][0]["seconds"]
    assert secs == round((stage.finished_at - stage.started_at).total_seconds(), 1) >= 0
    assert f"| ingest |  | completed | {secs:.1f} | corpus, eval, rejects | 12 |" in text
    assert "| accuracy | 0.25 | 0 | eval |" in text
    rows = artifacts.stage_rows(details)
    assert rows == [{"stage": "ingest", "round": None, "status": "completed", "seconds": secs,
                     "shards": 3, "rows": 12, "reused": False}]
