"""Textbook lessons through the stage flows: raw demo passages -> generate (one lesson each,
target 'text') -> curate (kept: the answer checks do not apply to a lesson) -> train (a plain
language-modelling loss on every lesson token), against the loopback fake OpenAI server and the
tiny test model. Mixed with question rows, each kind keeps its own loss term."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from flows import spec as spec_mod
from flows.curate import curate
from flows.generate import generate
from flows.train import examples as ex_mod
from flows.train import losses, train
from flows.train.trainer import TrainConfig, collate, compute_loss
from tests.helpers.openai_server import FakeOpenAI
from tests.helpers.rewriting_teacher import responder
from tests.helpers.tiny_student import save_tiny_base, tiny_llama, tiny_tokenizer, train_rows


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def tiny_base(tmp_path, tok):
    return save_tiny_base(tmp_path / "tiny-base", tok)


def curriculum(tmp_path, base_url, base, objective="cot"):
    doc = yaml.safe_load(open("curricula/textbook.yaml"))
    doc["corpus"]["demo"]["rows"] = 16
    doc["teacher"] = {"backend": "openai", "model": "fake", "base_url": base_url,
                      "temperature": 0.0}
    doc["student"].update({"base": str(base), "objective": objective, "max_steps": 3,
                           "batch_size": 2, "eval_rows": 2, "eval_max_new_tokens": 4,
                           "learning_rate": 0.01, "warmup_ratio": 0.0})
    path = tmp_path / "textbook.yaml"
    path.write_text(yaml.safe_dump(doc))
    return spec_mod.load(path)


@pytest.mark.parametrize("objective", ["cot", "step_by_step"])
def test_lessons_reach_the_student_with_an_lm_loss(tmp_path, workspace, tiny_base, objective):
    with FakeOpenAI(responder=responder()) as srv:
        spec = curriculum(tmp_path, srv.base_url, tiny_base, objective)
        run_id = workspace.start_run(spec, "run").id
        gen = generate(spec, workspace, run_id, progress_bar=False)
    n = gen.source_rows
    assert gen.complete and gen.rows_written == n
    cur = curate(spec, workspace, run_id)
    assert cur.kept == n and cur.kept_by_target == {"text": n}, cur.drops_by_reason
    stage = workspace.latest_stage("curate", run_id=run_id)
    kept = workspace.store.scan(workspace.shards(stage, "train")).collect()
    assert set(kept["target"].to_list()) == {"text"}
    assert kept["question"].null_count() == n and kept["prompt"].null_count() == n

    result = train(spec, workspace, run_id)
    assert result.examples_by_target == {"text": n} and result.steps == 3
    logged = [json.loads(m.meta_json) for m in workspace.catalog.metrics(run_id=run_id)
              if m.name == "train_loss"]
    assert logged and all("lm_loss" in m for m in logged)
    for m in logged:  # only lessons: the whole loss is the LM term
        assert m["loss"] == pytest.approx(m["lm_loss"], rel=1e-4)
    if objective == "step_by_step":
        assert all(m["label_loss"] == 0 and m["rationale_loss"] == 0 for m in logged)


def test_a_lesson_example_trains_every_token(tok):
    lesson = "Lesson. Vorla has 3 red lanterns and 5 blue lanterns. So Vorla has 8 lanterns."
    (e,) = ex_mod.row_examples({"id": "t", "target": "text", "rationale": lesson}, tok, "cot",
                               256)
    assert e.task == losses.TASK_TEXT and e.labels == e.input_ids
    assert tok.decode(e.input_ids).startswith(lesson)


def test_mixed_lessons_and_questions_keep_both_terms(tok):
    """One batch of a question row and a lesson: step_by_step = a*label + (1-a)*rationale +
    lm, each a token mean over its own rows."""
    question = train_rows(1)[0]
    lesson = {"id": "t", "target": "text", "rationale": "Lesson. Vorla has 3 red lanterns."}
    examples = (ex_mod.row_examples(question, tok, "step_by_step", 256)
                + ex_mod.row_examples(lesson, tok, "step_by_step", 256))
    batch = collate(examples, tok.pad_token_id)
    model = tiny_llama(tok, seed=0)
    cfg = TrainConfig(objective="step_by_step", label_weight=0.5)
    loss, parts = compute_loss(model, batch, cfg)
    assert parts["lm_loss"] > 0 and parts["label_loss"] > 0 and parts["rationale_loss"] > 0
    expected = 0.5 * parts["label_loss"] + 0.5 * parts["rationale_loss"] + parts["lm_loss"]
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # The lesson's gradient reaches the model: without it the loss is different.
    without = collate(examples[:-1], tok.pad_token_id)
    with torch.no_grad():
        assert compute_loss(model, without, cfg)[0].item() != pytest.approx(loss.item())


def test_lessons_beside_question_rows_in_one_student(tmp_path, workspace, tiny_base):
    """generate.also: [textbook] next to the rationale template on a corpus with questions:
    both kinds of rows come out of one stage, curation keeps both, and one student trains on
    both, each with its own loss term."""
    with FakeOpenAI(responder=responder()) as srv:
        spec = curriculum(tmp_path, srv.base_url, tiny_base, "step_by_step")
        spec = spec_mod.with_changes(spec, {"corpus.demo.raw": False,
                                            "generate.template": "rationale",
                                            "generate.also": ["textbook"],
                                            "student.max_steps": 10})
        run_id = workspace.start_run(spec, "run").id
        gen = generate(spec, workspace, run_id, progress_bar=False)
    n = gen.source_rows
    assert gen.complete and gen.requests == gen.rows_written == 2 * n
    cur = curate(spec, workspace, run_id)
    assert cur.kept_by_target["text"] == n and cur.kept_by_target["rationale"] > 0
    result = train(spec, workspace, run_id)
    assert result.examples_by_target == {"text": n, "rationale": cur.kept_by_target[
        "rationale"], "label": cur.kept_by_target["rationale"]}
    logged = [json.loads(m.meta_json) for m in workspace.catalog.metrics(run_id=run_id)
              if m.name == "train_loss"]
    # Steps 5 and 10 are logged; lessons reached the loss there (both kinds sharing one
    # batch, each with its own term: test_mixed_lessons_and_questions_keep_both_terms).
    assert any(m.get("lm_loss", 0) > 0 for m in logged)
