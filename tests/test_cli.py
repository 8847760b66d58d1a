"""The CLI contract: validate's exit codes and messages, --json output that is only JSON, and
ingest → runs → show through a real (temporary) Prefect server."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = str(ROOT / "curricula" / "quickstart.yaml")
runner = CliRunner()


def test_validate_ok():
    result = runner.invoke(app, ["validate", QUICKSTART])
    assert result.exit_code == 0, result.output
    assert "quickstart" in result.output


def test_validate_names_the_bad_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "corpus": {"format": "demo"},
                                   "teacher": {"backend": "telepathy"}}))
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert "teacher.backend" in result.output


def test_show_unknown_run():
    result = runner.invoke(app, ["show", "nope", "--json"])
    assert result.exit_code == 1


def test_runs_json_empty():
    result = runner.invoke(app, ["runs", "--json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == []


@pytest.mark.integration
def test_ingest_then_show_through_prefect(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"passage": "A has 2 kites.", "question": "How many?", "answer": "2"}\n'
                      '{"passage": "", "question": "q", "answer": "1"}\n')
    cur = tmp_path / "c.yaml"
    cur.write_text(yaml.safe_dump({"name": "cli", "corpus": {"path": "c.jsonl",
                                                              "eval_fraction": 0.0}}))
    result = runner.invoke(app, ["ingest", str(cur), "--json"])
    assert result.exit_code == 0, result.output
    ingested = json.loads(result.stdout)
    assert ingested["train_rows"] == 1 and ingested["rejects_by_reason"] == {"empty_text": 1}

    runs = json.loads(runner.invoke(app, ["runs", "--json"]).stdout)
    assert [r["id"] for r in runs] == [ingested["run_id"]]
    assert runs[0]["status"] == "completed"

    shown = json.loads(runner.invoke(app, ["show", ingested["run_id"], "--json"]).stdout)
    assert shown["shards"]["corpus"]["rows"] == 1
    assert shown["shards"]["eval"]["rows"] == 0
    assert shown["shards"]["rejects"]["rows"] == 1
    assert shown["rejects_by_reason"] == {"empty_text": 1}
    assert [s["name"] for s in shown["stages"]] == ["ingest"]
