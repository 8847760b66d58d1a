"""`stairs prompts history`: two versions of one template, each used by a run against the
loopback fake OpenAI server, listed with their kept rates (and, in the slow test, their trained
students' held-out accuracy); a version's text shown and restored from the catalog."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.prompting import default_prompts_dir
from tests.helpers.gen_helpers import demo_jsonl
from tests.helpers.openai_server import FakeOpenAI
from tests.helpers.tiny_student import tiny_llama, tiny_tokenizer

runner = CliRunner()
SUFFIX = "\nBe careful."


def tiny_base(folder: Path) -> Path:
    tok = tiny_tokenizer()
    tiny_llama(tok).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_version(prompts: Path, careful: bool) -> str:
    doc = yaml.safe_load((default_prompts_dir() / "rationale.yaml").read_text())
    if careful:  # version 2: one more sentence at the end of the question
        doc["messages"][-1]["content"] = doc["messages"][-1]["content"].rstrip("\n") + SUFFIX
    path = prompts / "steps.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path.read_text()


def run_once(path: Path, ws, *, student: bool) -> str:
    """One run of generate and curate (and train), as the staircase's round 0 runs them."""
    from flows.curate import curate
    from flows.generate import generate
    from flows.preflight import load_checked
    from flows.train import train

    spec = load_checked(path)
    run_id = ws.start_run(spec, "run").id
    generate(spec, ws, run_id, progress_bar=False)
    curate(spec, ws, run_id)
    if student:
        train(spec, ws, run_id)
    ws.catalog.finish_run(run_id)
    return run_id


def two_runs(tmp_path: Path, ws, *, student: Path | None = None):
    """Run 1 with version 1 of template 'steps', run 2 with version 2, which makes the fake
    teacher wrong on the first three corpus rows."""
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    corpus = demo_jsonl(tmp_path / "corpus.jsonl", 12, seed=2)
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    with FakeOpenAI() as srv:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({
            "name": "history", "corpus": {"path": corpus.name, "eval_fraction": 0.2},
            "teacher": {"backend": "openai", "model": "fake", "base_url": srv.base_url},
            "generate": {"template": "steps", "prompts_dir": "prompts"},
            "student": {"base": str(student or "smollm2-135m"), "max_steps": 1,
                        "batch_size": 2, "eval_rows": 2, "eval_max_new_tokens": 4,
                        "evaluate_base": False}}))
        texts = [write_version(prompts, careful=False)]
        runs = [run_once(path, ws, student=student is not None)]
        srv.script = {f"{r['question']}{SUFFIX}": ("Hmm.\nAnswer: 99", "stop") for r in rows[:3]}
        texts.append(write_version(prompts, careful=True))
        runs.append(run_once(path, ws, student=student is not None))
    return prompts, rows, runs, texts


def history(prompts: Path) -> dict:
    result = runner.invoke(app, ["prompts", "history", "steps", "--prompts-dir", str(prompts),
                                 "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_history_lists_both_versions_with_their_kept_rates(tmp_path, workspace):
    prompts, rows, (first, second), (v1_text, v2_text) = two_runs(tmp_path, workspace)
    catalog = workspace.catalog
    curated = {s.run_id: json.loads(s.summary_json) for s in catalog.stages_named("curate")}
    doc = history(prompts)
    v1, v2 = doc["versions"]
    assert v1["runs"] == [first] and v2["runs"] == [second]
    assert v1["content_hash"] != v2["content_hash"] == doc["current_hash"]
    assert (v1["current"], v2["current"]) == (False, True)
    for v, run_id in ((v1, first), (v2, second)):
        assert (v["kept"], v["generated"]) == (curated[run_id]["kept"],
                                               curated[run_id]["generated"])
        assert v["kept_rate"] == round(v["kept"] / v["generated"], 4)
        assert v["text_stored"] and v["students"] == [] and v["student_accuracy"] is None
    generated = {r["question"] for r in _generated_rows(workspace, first)}
    planted = sum(1 for r in rows[:3] if r["question"] in generated)
    assert planted and v1["kept_rate"] == 1.0 and v2["kept"] == v1["kept"] - planted

    table = runner.invoke(app, ["prompts", "history", "steps", "--prompts-dir", str(prompts)])
    assert v1["content_hash"][:12] in table.stdout
    assert f"{v2['content_hash'][:12]} (current)" in table.stdout

    # Show and restore version 1 from the catalog alone.
    shown = runner.invoke(app, ["prompts", "history", "steps", "--show", v1["content_hash"][:8]])
    assert shown.exit_code == 0 and shown.stdout == v1_text
    restored = runner.invoke(app, ["prompts", "history", "steps", "--prompts-dir", str(prompts),
                                   "--restore", v1["content_hash"][:8]])
    assert restored.exit_code == 0, restored.output
    assert (prompts / "steps.yaml").read_text() == v1_text != v2_text
    # An edit no run used is not overwritten without --force.
    (prompts / "steps.yaml").write_text(v1_text + "# draft\n")
    kept_draft = runner.invoke(app, ["prompts", "history", "steps", "--prompts-dir",
                                     str(prompts), "--restore", v2["content_hash"][:8]])
    assert kept_draft.exit_code == 1 and "--force" in kept_draft.output
    assert (prompts / "steps.yaml").read_text().endswith("# draft\n")
    forced = runner.invoke(app, ["prompts", "history", "steps", "--prompts-dir", str(prompts),
                                 "--restore", v2["content_hash"][:8], "--force"])
    assert forced.exit_code == 0 and (prompts / "steps.yaml").read_text() == v2_text
    unknown = runner.invoke(app, ["prompts", "history", "steps", "--show", "ffffffffff"])
    assert unknown.exit_code == 1 and "no stored template version" in unknown.output


def _generated_rows(ws, run_id: str) -> list[dict]:
    stage = ws.latest_stage("generate", run_id=run_id)
    return ws.store.table(ws.shards(stage, "generated")).to_pylist()


@pytest.mark.slow  # trains two tiny students: a torch import and a BPE tokenizer, ~30 s here
def test_history_shows_each_versions_students(tmp_path, workspace):
    base = tiny_base(tmp_path / "tiny-base")
    prompts, _, runs, _ = two_runs(tmp_path, workspace, student=base)
    trained = {s.run_id: json.loads(s.summary_json)
               for s in workspace.catalog.stages_named("train")}
    for v, run_id in zip(history(prompts)["versions"], runs):
        t = trained[run_id]
        assert v["student_accuracy"] == t["student_accuracy"] is not None
        assert v["students"] == [{"model_id": t["student_model_id"], "run": run_id, "round": 0,
                                  "accuracy": t["student_accuracy"],
                                  "eval_rows": t["eval_rows"]}]
        assert v["uses"][0]["student_accuracy"] == t["student_accuracy"]
