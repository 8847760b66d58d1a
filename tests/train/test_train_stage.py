"""Evaluation scoring and the train stage end to end on a tiny model (fast, offline)."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pytest

from flows.evaluate import evaluate_model
from flows.evaluate.engines import TorchEngine
from flows.evaluate.score import score_outputs
from flows.prompting import load_template
from flows.train import examples as ex_mod
from flows.train.trainer import TrainConfig, fit
from tests.helpers.tiny_student import tiny_llama, tiny_tokenizer, train_rows


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_score_uses_the_shared_answer_normalizer():
    outputs = ["3 + 4 = 7.\nAnswer: 7", "Answer: seven", "so Answer: 7 lanterns",
               "the answer is unclear", None, "Answer: 8"]
    _, correct = score_outputs(outputs, ["7", "7", "7", "7", "7", "7"])
    assert correct == [True, True, True, False, False, False]


def _eval_rows():
    return [{"id": r["id"] if "id" in r else f"e{i}", "passage": r["passage"],
             "question": r["question"], "answer": r["answer"]}
            for i, r in enumerate(__import__("flows.ingest.demo", fromlist=["x"]).generate(2, seed=9))]


def test_evaluation_scores_a_known_set_of_answers(tok):
    """Teach a tiny model one reply, "Answer: A", for both held-out prompts, where A is the
    gold answer of the first row only: greedy evaluation must score exactly that row correct."""
    template = load_template("rationale")
    rows = _eval_rows()
    gold = rows[0]["answer"]
    assert rows[1]["answer"] != gold
    train = [{"id": f"t{i}", "messages": json.dumps(template.render(r)), "answer": gold}
             for i, r in enumerate(rows)]
    groups = ex_mod.build(train, tok, "label", 512).groups
    model = tiny_llama(tok, seed=0)
    cfg = TrainConfig(objective="label", max_steps=25, batch_size=2, learning_rate=2e-2,
                      warmup_ratio=0.0)
    fit(model, groups, cfg, pad_id=tok.pad_token_id, progress=False)
    result = evaluate_model(TorchEngine(model, tok), rows, template, max_new_tokens=8)
    assert [p["output"] for p in result.predictions] == [f"Answer: {gold}"] * 2
    assert [p["correct"] for p in result.predictions] == [True, False]
    assert [p["predicted"] for p in result.predictions] == [gold, gold]
    assert result.accuracy == 0.5 and result.n == 2 and result.correct == 1
    assert result.tokens_per_s > 0


def _seed_run(ws, spec, rows, evals):
    """A run with the shards the train stage reads, as ingest and curate write them."""
    run = ws.start_run(spec, "run")
    with ws.stage(run.id, "ingest") as st:
        ws.store.write(pa.Table.from_pylist(evals), stage=st.stage, kind="eval")
    with ws.stage(run.id, "curate", round_index=0) as st:
        ws.store.write(pa.Table.from_pylist(rows), stage=st.stage, kind="train")
    return run.id


def test_train_stage_records_model_lineage_and_metrics(workspace, tok, tmp_path):
    from flows.spec import Curriculum
    from flows.train import train
    from storage.tables import Model

    base_dir = tmp_path / "tiny-base"
    tiny_llama(tok, seed=0).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    spec = Curriculum.model_validate({
        "name": "tiny", "corpus": {"format": "demo"},
        "student": {"base": str(base_dir), "objective": "step_by_step", "max_steps": 3,
                    "batch_size": 2, "learning_rate": 1e-3, "eval_rows": 2,
                    "eval_max_new_tokens": 4, "checkpoint_every": 2,
                    "checkpoint_minutes": 0}})
    rows = train_rows(6)
    # Eval rows with a rationale get a loss too ("where available").
    evals = _eval_rows()
    evals[0]["rationale"] = "Add them."
    run_id = _seed_run(workspace, spec, rows, evals)
    summary = train(spec, workspace, run_id)
    assert summary.steps == 3 and summary.examples == 12 and summary.rows == 6
    cat = workspace.catalog
    student = cat.get(Model, summary.student_model_id)
    base = cat.get(Model, summary.base_model_id)
    assert student.kind == "student" and student.parent_id == base.id and base.kind == "base"
    trained_on = cat.model_training_shards(student.id)
    assert [s.kind for s in trained_on] == ["train"]
    names = {(m.name, m.model_id) for m in cat.metrics(run_id=run_id)}
    assert ("eval_accuracy", base.id) in names and ("eval_accuracy", student.id) in names
    assert ("eval_loss", student.id) in names
    assert sum(1 for m in cat.metrics(run_id=run_id) if m.name == "train_loss") >= 1
    meta = json.loads(next(m.meta_json for m in cat.metrics(model_id=student.id)
                           if m.name == "eval_accuracy"))
    assert meta["training_shards"] == [trained_on[0].id] and meta["n"] == 2
    # The saved student is a plain HF folder that loads and evaluates by reference.
    ref = f"catalog:{student.id}"
    again = evaluate_model(ref, evals, load_template("rationale"), max_new_tokens=4, catalog=cat)
    assert again.n == 2 and again.format == "hf"
    # Same inputs: the stage is reused, not retrained; checkpoint settings are not inputs.
    assert train(spec, workspace, run_id) == summary
    other_checkpoints = spec.model_copy(update={"student": spec.student.model_copy(
        update={"checkpoint_every": 1, "checkpoint_minutes": 10})})
    assert train(other_checkpoints, workspace, run_id) == summary
    assert len([m for m in cat.models() if m.kind == "student"]) == 1
    fewer_steps = spec.model_copy(update={"student": spec.student.model_copy(
        update={"max_steps": 2})})
    assert train(fewer_steps, workspace, run_id).steps == 2  # a real input: trained again


def test_train_without_curated_rows_names_the_run(workspace):
    from flows.spec import Curriculum
    from flows.train import TrainError, train

    spec = Curriculum.model_validate({"name": "tiny", "corpus": {"format": "demo"}})
    run = workspace.start_run(spec, "run")
    with pytest.raises(TrainError, match=f"run {run.id} round 0.*train"):
        train(spec, workspace, run.id)


def test_validate_names_a_missing_student_base(tmp_path):
    from flows.preflight import load_checked
    from flows.spec import SpecError

    cur = tmp_path / "c.yaml"
    cur.write_text("name: c\ncorpus: {format: demo}\nstudent: {base: ./no-such-model}\n")
    with pytest.raises(SpecError, match="student.base: .*no-such-model"):
        load_checked(cur)


def _tiny_base(tok, folder, seed=0, layers=2):
    tiny_llama(tok, seed=seed, layers=layers).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _staged_rows(n_per_stage: int = 4, stages: int = 3) -> list[dict]:
    """Curated rows as curate writes them: sorted by `order`, stage 0 (easiest) first."""
    rows = train_rows(n_per_stage * stages)
    for i, r in enumerate(rows):
        r["curriculum_stage"], r["order"] = i // n_per_stage, i
    return rows


def test_train_stage_keeps_the_curriculum_order_and_records_it(workspace, tok, tmp_path):
    """Curated stages 0, 1, 2 are trained in that order (shuffled only inside a stage); the
    order is in the summary, in stairs.json and on every logged step; `shuffled` mixes them."""
    from flows.models import model_path, read_meta
    from flows.spec import Curriculum
    from flows.train import train
    from storage.tables import Model

    base = _tiny_base(tok, tmp_path / "base")
    rows = _staged_rows()
    # Shard order must not matter: the stage reads rows by `order`.
    run_id = _seed_run(workspace, Curriculum.model_validate(
        {"name": "tiny", "corpus": {"format": "demo"}}), rows[::-1], _eval_rows())
    student = {"base": base, "objective": "cot", "max_steps": 12, "batch_size": 2,
               "learning_rate": 1e-3, "eval_rows": 1, "eval_max_new_tokens": 2,
               "evaluate_base": False}
    spec = Curriculum.model_validate({"name": "tiny", "corpus": {"format": "demo"},
                                      "student": student})
    result = train(spec, workspace, run_id)
    # 12 rows / batch 2 = 6 steps per epoch: epoch 1 is stages 0, 1, 2; epoch 2 starts over.
    assert result.order == "curriculum"
    assert result.precision == "fp32"  # cpu_bf16 is off unless asked for
    assert result.stage_runs == [
        {"stage": 0, "steps": [1, 2]}, {"stage": 1, "steps": [3, 4]}, {"stage": 2, "steps": [5, 6]},
        {"stage": 0, "steps": [7, 8]}, {"stage": 1, "steps": [9, 10]},
        {"stage": 2, "steps": [11, 12]}]
    logged = [json.loads(m.meta_json) for m in workspace.catalog.metrics(run_id=run_id)
              if m.name == "train_loss"]
    assert [(m["step"], m["stage"]) for m in logged] == [(5, 2), (10, 1), (12, 2)]
    meta = read_meta(model_path(workspace.catalog.get(Model, result.student_model_id).path))
    assert meta["order"] == "curriculum" and meta["stage_runs"] == result.stage_runs

    shuffled = spec.model_copy(update={"student": spec.student.model_copy(
        update={"order": "shuffled", "max_steps": 6})})
    mixed = train(shuffled, workspace, run_id)
    stages = [r["stage"] for r in mixed.stage_runs]
    assert stages != sorted(stages)  # a pool of all stages: a harder batch comes before an easier


def test_batch_plan_shuffles_inside_stages_and_replays_earlier_ones():
    from flows.train.trainer import TrainConfig, batch_plan

    stages = [0] * 8 + [1] * 8 + [2] * 8
    sizes = [10] * 24
    cfg = TrainConfig(max_steps=None, epochs=1, batch_size=4, seed=3)
    plan = batch_plan(sizes, cfg, stages)
    assert [b.stage for b in plan] == [0, 0, 1, 1, 2, 2]
    assert all(stages[i] == b.stage for b in plan for i in b.rows)
    assert [i for b in plan[:2] for i in b.rows] != list(range(8))  # shuffled inside stage 0
    again = batch_plan(sizes, cfg, stages)
    assert again == plan  # a pure function of the seed (resume depends on it)

    replay = batch_plan(sizes, cfg.model_copy(update={"replay": 0.5}), stages)
    by_stage = {s: [i for b in replay if b.stage == s for i in b.rows] for s in (0, 1, 2)}
    assert sorted(by_stage[0]) == list(range(8))
    # Stage 1 = its 8 rows + 4 of stage 0; stage 2 = its 8 rows + 4 of stages 0-1.
    assert sorted(i for i in by_stage[1] if stages[i] == 1) == list(range(8, 16))
    assert sum(stages[i] == 0 for i in by_stage[1]) == 4
    assert sum(stages[i] < 2 for i in by_stage[2]) == 4 and len(by_stage[2]) == 12


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_cpu_bf16_runs_the_steps_in_bfloat16_and_keeps_float32_weights(tok, cpu_bf16):
    import torch

    template = load_template("rationale")
    train = [{"id": f"t{i}", "messages": json.dumps(template.render(r)), "answer": r["answer"]}
             for i, r in enumerate(_eval_rows())]
    groups = ex_mod.build(train, tok, "label", 512).groups
    model = tiny_llama(tok, seed=0)
    seen = set()
    model.lm_head.register_forward_hook(lambda mod, args, out: seen.add(out.dtype))
    cfg = TrainConfig(objective="label", max_steps=4, batch_size=2, learning_rate=2e-2,
                      warmup_ratio=0.0, cpu_bf16=cpu_bf16, device="cpu")
    result = fit(model, groups, cfg, pad_id=tok.pad_token_id, progress=False, device="cpu")
    assert seen == ({torch.bfloat16} if cpu_bf16 else {torch.float32})
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert result.steps == 4 and result.losses
    assert result.precision == ("bf16" if cpu_bf16 else "fp32")
    assert all(math.isfinite(v) for entry in result.losses for k, v in entry.items()
               if k.startswith("loss"))


def test_eval_rows_zero_trains_without_scoring(workspace, tok, tmp_path):
    """student.eval_rows 0: the student is trained and saved, and the train stage scores
    nothing (the quickstart leaves that to the quantize stage's float file)."""
    from flows.spec import Curriculum
    from flows.train import train
    from storage.tables import Model

    base_dir = tmp_path / "tiny-base"
    tiny_llama(tok, seed=0).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    spec = Curriculum.model_validate({
        "name": "tiny", "corpus": {"format": "demo"},
        "student": {"base": str(base_dir), "max_steps": 2, "batch_size": 2,
                    "learning_rate": 1e-3, "eval_rows": 0, "evaluate_base": True}})
    run_id = _seed_run(workspace, spec, train_rows(4), _eval_rows())
    summary = train(spec, workspace, run_id)
    assert summary.steps == 2 and summary.student_accuracy is None and summary.eval_rows == 0
    assert workspace.catalog.get(Model, summary.student_model_id).kind == "student"
    names = {m.name for m in workspace.catalog.metrics(run_id=run_id)}
    assert "train_loss" in names and not names & {"eval_accuracy", "eval_loss"}
