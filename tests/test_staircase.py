"""The staircase: the promotion gate's rules (fast) and a reduced two-round staircase with the
real embedded teacher and student (slow): lineage, gate decisions, report, resume."""

import pytest
import yaml

from flows.spec import Curriculum, load
from flows.staircase import gate

TINY = {
    "name": "tiny-staircase",
    "corpus": {"format": "demo", "demo": {"rows": 48, "seed": 3, "tasks": ["sum"]},
               "eval_fraction": 0.25},
    "teacher": {"backend": "llamacpp", "model": "smollm2-135m", "max_tokens": 64, "samples": 2},
    "generate": {"max_rows": 8},
    "student": {"max_steps": 3, "batch_size": 2, "eval_rows": 6, "eval_max_new_tokens": 48,
                "evaluate_base": False},
    "quantization": {"gguf_types": ["Q8_0"], "int8_absmax": None, "int4_group_size": None,
                     "eval_rows": 6, "max_new_tokens": 48, "speed_tokens": 8},
    "staircase": {"rounds": 2, "gate": "threshold", "min_accuracy": 0.0},
}


def spec_with(**staircase) -> Curriculum:
    return Curriculum.model_validate({**TINY, "staircase": {**TINY["staircase"], **staircase}})


def test_gate_beat_teacher():
    spec = spec_with(gate="beat_teacher")
    assert gate(spec, 0.5, 0.4)[0]
    ok, why = gate(spec, 0.4, 0.4)
    assert not ok and "<=" in why
    assert not gate(spec, None, 0.4)[0]


def test_gate_threshold_and_unscored_teacher():
    spec = spec_with(gate="threshold", min_accuracy=0.3)
    assert gate(spec, 0.3, 0.9)[0]
    assert not gate(spec, 0.29, 0.0)[0]
    remote = spec_with(gate="beat_teacher", min_accuracy=0.2)
    ok, why = gate(remote, 0.25, None)
    assert ok and "not scored" in why


@pytest.mark.slow
def test_reduced_staircase_with_the_real_embedded_models(workspace, tmp_path, capsys):
    from flows.models import model_path
    from flows.report import flat_rounds, round_report, write_report
    from flows.runinfo import run_details
    from flows.staircase import staircase

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    spec = load(path)
    run_id = workspace.start_run(spec, "run").id
    staircase(spec, workspace, run_id)
    printed = capsys.readouterr().out
    # One line per stage, so a log (or the UI's flow-run log) shows where a long staircase is.
    for line in ("round 0 generate: 16 rows", "round 0 curate: kept", "round 0 train:",
                 "round 0 quantize: F16", "round 1 generate:"):
        assert line in printed, printed

    rounds = workspace.catalog.rounds(run_id)
    assert [r.index for r in rounds][:1] == [0]
    first = rounds[0]
    assert first.teacher == "llamacpp:smollm2-135m"
    assert first.gate_passed is True and "min_accuracy" in first.gate_reason  # threshold 0
    promoted = workspace.catalog.get(__import__("storage.tables").tables.Model,
                                     first.promoted_model_id)
    # Written models are registered relative to the models root (flows/models.py).
    assert promoted.quant == "Q8_0" and model_path(promoted.path).exists()
    # Lineage in one walk: quantized file -> student -> base, and the student's training shards.
    chain = workspace.catalog.model_lineage(promoted.id)
    assert [m.kind for m in chain] == ["quantized", "student", "base"]
    shards = workspace.catalog.model_training_shards(chain[1].id)
    assert shards and {s.kind for s in shards} == {"train"}
    # Round 1 was taught by the promoted file, and its gate decision is recorded with a reason.
    assert len(rounds) == 2
    assert rounds[1].teacher == f"llamacpp:catalog:{promoted.id}"
    assert rounds[1].gate_passed is not None and rounds[1].gate_reason

    report = round_report(workspace, run_id)
    assert [r["round"] for r in report] == [0, 1]
    assert report[0]["teacher_accuracy"] is not None
    assert report[0]["quantized"][-1]["type"] == "Q8_0" and report[0]["quantized"][-1]["bytes"] > 0
    assert report[0]["rows_generated"] == 16
    paths = write_report(workspace, run_id, report)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "tiny-staircase" in paths["html"].read_text() or run_id in paths["html"].read_text()

    # Where each round's time went: each stage's start to finish in the catalog, and the
    # teacher's scoring before round 0 (round 1's teacher, round 0's file, was scored as a
    # student), in the report, its HTML, the Prefect table's flat columns and `stairs show`.
    stages = {(s.name, s.round_index): s for s in workspace.catalog.stages(run_id)}
    for r in report:
        secs = r["seconds"]
        assert list(secs) == ["teacher score", "generate", "curate", "train", "quantize"]
        for name in ("generate", "curate", "train", "quantize"):
            st = stages.get((name, r["round"]))  # a round that stopped early lacks the rest
            assert secs[name] == (None if st is None else
                                  round((st.finished_at - st.started_at).total_seconds(), 1))
    first = report[0]["seconds"]
    assert first["teacher score"] > 0 and first["generate"] > 0 and first["train"] > 0
    assert first["quantize"] > 0
    assert report[1]["seconds"]["teacher score"] is None and report[1]["seconds"]["generate"] > 0
    assert f"train {first['train']:.0f}" in paths["html"].read_text()
    assert flat_rounds(report)[0]["quantize s"] == first["quantize"]
    shown = {(s["name"], s["round"]): s["seconds"] for s in run_details(workspace, run_id)["stages"]}
    assert shown[("train", 0)] == first["train"]

    # Resume: running the same run again redoes nothing (every stage is reused in place).
    before = [(s.id, s.status) for s in workspace.catalog.stages(run_id)]
    staircase(spec, workspace, run_id)
    assert [(s.id, s.status) for s in workspace.catalog.stages(run_id)] == before


def test_gate_without_a_teacher_score_needs_min_accuracy():
    spec = spec_with(gate="beat_teacher", min_accuracy=None)
    ok, why = gate(spec, 0.99, None)
    assert not ok and "teacher not scored" in why and "min_accuracy" in why


def test_gate_max_kl_is_a_condition():
    spec = spec_with(gate="threshold", min_accuracy=0.5, max_kl=0.05)
    assert gate(spec, 0.9, None, kl=0.01)[0]
    ok, why = gate(spec, 0.9, None, kl=0.2)
    assert not ok and "max_kl" in why
    ok, why = gate(spec, 0.9, None, kl=None)
    assert not ok and "not measured" in why


def test_a_remote_teacher_is_scored_through_its_endpoint_cached_and_within_budget(workspace):
    """An OpenAI-compatible teacher is asked for the first teacher_eval_rows held-out rows; the
    answers land in the response cache (a second run sends nothing), and what scoring sent counts
    against teacher.max_requests in the generate stage that follows."""
    from flows.generate import generate
    from flows.ingest import ingest
    from flows.staircase import score_teacher
    from tests.helpers.openai_server import FakeOpenAI

    with FakeOpenAI() as server:
        spec = Curriculum.model_validate({
            "name": "remote", "corpus": {"format": "demo", "demo": {"rows": 40, "seed": 3,
                                                                    "tasks": ["sum"]},
                                         "eval_fraction": 0.25},
            "teacher": {"backend": "openai", "model": "fake", "base_url": server.base_url,
                        "max_requests": 8, "temperature": 0.0},
            "generate": {"max_rows": 10},
            "quantization": {"gguf_types": ["Q8_0"], "eval_rows": 20, "max_new_tokens": 64},
            "staircase": {"teacher_eval_rows": 5}})
        run_id = workspace.start_run(spec, "run").id
        ingest(spec, workspace, run_id)
        acc = score_teacher(spec, workspace, run_id, spec.teacher, 0)
        assert acc == 1.0  # the fake solves every sum
        assert sum(server.received.values()) == 5
        metrics = {m.name: m for m in workspace.catalog.metrics(run_id=run_id)}
        assert metrics["teacher_score_requests"].value == 5
        assert metrics["teacher_accuracy"].value == 1.0
        # A new run of the same curriculum: scored from the response cache, nothing sent.
        again = workspace.start_run(spec, "run").id
        ingest(spec, workspace, again)
        assert score_teacher(spec, workspace, again, spec.teacher, 0) == 1.0
        assert sum(server.received.values()) == 5
        # The first run's generate stage may send 8 - 5 = 3 requests.
        result = generate(spec, workspace, run_id, progress_bar=False)
        assert result.sent == 3 and result.budget_exhausted


def test_gate_on_a_level_compares_that_levels_scores_with_the_margin():
    from tests.helpers.climb import climb_doc

    spec = Curriculum.model_validate(climb_doc("http://127.0.0.1:9/v1", "x", gate_level=None,
                                               gate_margin=0.0))
    ok, why = gate(spec, 0.1, 0.9, level=("hard", 0.4, 0.3))  # overall scores do not decide
    assert ok and why == "level hard: Q8_0 student 0.400 > teacher 0.300"
    ok, why = gate(spec, 0.9, 0.1, level=("hard", 0.3, 0.3))
    assert not ok and why == "level hard: Q8_0 student 0.300 <= teacher 0.300"
    ok, why = gate(spec, 0.9, 0.1, level=("hard", 0.3, None))
    assert not ok and why == "level 'hard': teacher not scored on it"
    lenient = spec.model_copy(update={"staircase": spec.staircase.model_copy(
        update={"gate_margin": -0.1})})
    assert gate(lenient, 0.9, 0.1, level=("hard", 0.25, 0.3)) == (
        True, "level hard: Q8_0 student 0.250 > teacher 0.300 -0.100")
