"""`stairs export`: a curated run's kept rows as a Hugging Face dataset folder that
datasets.load_from_disk and load_dataset("parquet") read back, with its dataset card."""

from __future__ import annotations

import json

import datasets
import pytest
from typer.testing import CliRunner

from flows import spec as spec_mod
from flows.cli import app
from flows.curate import curate
from flows.export import ExportError, push_to_hub
from flows.ingest import ingest
from tests.helpers.curation_fixtures import planted, teacher_rows, write_generate_stage

runner = CliRunner()


@pytest.fixture
def curated(tmp_path, workspace):
    path = tmp_path / "c.yaml"
    path.write_text("name: export-test\ncorpus: {format: demo, demo: {rows: 40}}\n"
                    "curation: {min_confidence: 0.0}\n")
    spec = spec_mod.load(path)
    run_id = workspace.start_run(spec, "run").id
    ingest(spec, workspace, run_id)
    st = workspace.latest_stage("ingest", run_id=run_id)
    corpus = workspace.store.scan(workspace.shards(st, "corpus")).collect().to_dicts()
    rows = teacher_rows(corpus, samples=2, p_correct=0.8, seed=2)
    rows += list(planted(corpus[0]).values())
    write_generate_stage(workspace, run_id, rows)
    return run_id, curate(spec, workspace, run_id)


def test_export_reads_back_with_datasets(curated, tmp_path):
    run_id, summary = curated
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", run_id, "--to", str(out), "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.stdout)
    assert written["rows"] == summary.kept and written["kind"] == "kept"
    disk = datasets.load_from_disk(str(out))
    assert disk.num_rows == summary.kept and all(disk["keep"])
    parquet = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"),
                                    split="train")
    assert parquet.num_rows == summary.kept
    assert sorted(parquet["id"]) == sorted(disk["id"])
    card = (out / "README.md").read_text()
    assert "template: `rationale`" in card and "min_confidence" in card
    for reason, count in summary.drops_by_reason.items():
        assert f"| {reason} | {count} |" in card
    # Export never writes over a folder that holds something.
    again = runner.invoke(app, ["export", run_id, "--to", str(out)])
    assert again.exit_code == 1 and "not empty" in again.output


def test_export_names_a_missing_stage_and_a_missing_token(curated, tmp_path, monkeypatch):
    run_id, _ = curated
    result = runner.invoke(app, ["export", run_id, "--stage", "train", "--to", str(tmp_path / "x")])
    assert result.exit_code == 1 and "--stage 'train'" in result.output
    monkeypatch.delenv("STAIRS_TEST_NO_TOKEN", raising=False)
    with pytest.raises(ExportError, match="STAIRS_TEST_NO_TOKEN is not set"):
        push_to_hub(tmp_path, "someone/data", token_env="STAIRS_TEST_NO_TOKEN")
