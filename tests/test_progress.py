"""Progress bars on stderr for the slow loops outside generate's request loop: shown on a terminal
or with STAIRS_PROGRESS=1, never otherwise (tests, logs, --json)."""

from __future__ import annotations

import flows.progress
from flows import spec as spec_mod
from flows.evaluate.score import answer_accuracy
from flows.ingest import ingest
from flows.prompting import load_template


class Echo:
    """An engine that answers every question with one fixed reply, in chunks as asked."""

    def __init__(self):
        self.calls = 0

    def generate(self, conversations, max_new_tokens):
        self.calls += 1
        return ["Answer: 7"] * len(conversations), len(conversations)


def test_ingest_and_evaluation_show_bars_only_when_asked(tmp_path, workspace, capsys,
                                                         monkeypatch):
    path = tmp_path / "c.yaml"
    path.write_text("name: bars\ncorpus: {format: demo, demo: {rows: 1500}}\n")
    spec = spec_mod.load(path)
    monkeypatch.setenv("STAIRS_PROGRESS", "1")
    ingest(spec, workspace, workspace.start_run(spec, "run").id)
    rows = [{"id": str(i), "passage": "Vorla has 3 red kites and 4 blue kites.",
             "question": "How many kites does Vorla have in total?", "answer": "7"}
            for i in range(70)]
    engine = Echo()
    scored = answer_accuracy(engine, rows, load_template("rationale"), few_shot=False,
                             max_new_tokens=4, description="score echo")
    err = capsys.readouterr().err
    assert "ingest bars" in err and "1500/1500" in err
    assert "score echo (70 rows)" in err and "70/70" in err
    assert scored.accuracy == 1.0 and engine.calls == 3  # 32 + 32 + 6
    monkeypatch.setenv("STAIRS_PROGRESS", "0")
    answer_accuracy(Echo(), rows, load_template("rationale"), few_shot=False, max_new_tokens=4)
    assert capsys.readouterr().err == ""


def test_a_resumed_loop_starts_at_its_step_and_shows_its_own_columns(capsys, monkeypatch):
    monkeypatch.setenv("STAIRS_PROGRESS", "1")
    with flows.progress.bar("training", 5, start=2, columns=("loss {task.fields[loss]:.4f}",),
                            loss=0.0) as advance:
        for loss in (0.9, 0.7, 0.25):
            advance(loss=loss)
    err = capsys.readouterr().err
    assert "training" in err and "5/5" in err and "loss 0.2500" in err
    monkeypatch.setenv("STAIRS_PROGRESS", "0")
    with flows.progress.bar("training", 5, columns=("loss {task.fields[loss]:.4f}",),
                            loss=0.0) as advance:
        advance(loss=1.0)
    assert capsys.readouterr().err == ""
