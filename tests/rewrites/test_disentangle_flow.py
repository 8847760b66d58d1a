"""Disentangle from raw text through the stage flows: raw demo passages -> generate (one row per
teacher-written question, verification by re-answering) -> curate (each question voted on
alone; unverified ones dropped) -> train (prompt = passage + the row's own question), against
the loopback fake OpenAI server and the tiny test model."""

from __future__ import annotations

import json

import polars as pl
import pytest
import yaml

from flows import spec as spec_mod
from flows.curate import curate
from flows.generate import generate
from flows.ingest import ingest
from flows.train import examples as ex_mod
from flows.train import train
from tests.helpers.openai_server import FakeOpenAI
from tests.helpers.rewriting_teacher import responder
from tests.helpers.tiny_student import save_tiny_base, tiny_tokenizer

SYSTEM = "You write study material"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def tiny_base(tmp_path, tok):
    return save_tiny_base(tmp_path / "tiny-base", tok)


def curriculum(tmp_path, base_url: str, base, **generate_extra):
    doc = yaml.safe_load(open("curricula/disentangle.yaml"))
    doc["corpus"]["demo"]["rows"] = 24
    doc["teacher"] = {"backend": "openai", "model": "fake", "base_url": base_url,
                      "concurrency": 4, "temperature": 0.0, "samples": 1}
    doc["generate"]["verify"]["teacher"] = None  # the writer (the fake server) re-answers
    doc["generate"].update(generate_extra)
    doc["student"].update({"base": str(base), "max_steps": 2, "batch_size": 2,
                           "eval_rows": 2, "eval_max_new_tokens": 4, "evaluate_base": False,
                           "max_length": 256})
    path = tmp_path / "disentangle.yaml"
    path.write_text(yaml.safe_dump(doc))
    return spec_mod.load(path)


def test_raw_demo_keeps_gold_questions_only_in_the_held_out_split(tmp_path, workspace):
    spec = curriculum(tmp_path, "http://127.0.0.1:9/v1", tmp_path)
    run_id = workspace.start_run(spec, "run").id
    summary = ingest(spec, workspace, run_id)
    st = workspace.latest_stage("ingest", run_id=run_id)
    corpus = workspace.store.scan(workspace.shards(st, "corpus")).collect()
    evals = workspace.store.scan(workspace.shards(st, "eval")).collect()
    assert summary.train_rows == len(corpus) > 0 and summary.eval_rows == len(evals) > 0
    assert corpus["question"].null_count() == len(corpus)
    assert corpus["answer"].null_count() == len(corpus)
    assert evals["question"].null_count() == 0 and evals["answer"].null_count() == 0
    # The same demo settings with questions hold out the very same rows (same ids), so a raw
    # run and a run with gold questions are scored on the same held-out questions.
    with_questions = spec_mod.with_changes(spec, {"corpus.demo.raw": False})
    other = workspace.start_run(with_questions, "run").id
    ingest(with_questions, workspace, other)
    st2 = workspace.latest_stage("ingest", run_id=other)
    evals2 = workspace.store.scan(workspace.shards(st2, "eval")).collect()
    assert sorted(evals2["id"].to_list()) == sorted(evals["id"].to_list())


def test_disentangle_end_to_end(tmp_path, workspace, tok, tiny_base):
    with FakeOpenAI(responder=responder()) as srv:
        spec = curriculum(tmp_path, srv.base_url, tiny_base)
        run_id = workspace.start_run(spec, "run").id
        gen = generate(spec, workspace, run_id, progress_bar=False)
    assert gen.complete
    stage = workspace.latest_stage("generate", run_id=run_id)
    rows = workspace.store.scan(workspace.shards(stage, "generated")).collect()
    n = gen.source_rows
    # N passages x 3 questions -> 3N candidate rows, each its own question, stable ids.
    assert gen.rows_written == len(rows) == 3 * n
    assert rows["id"].n_unique() == 3 * n
    assert rows.group_by("source_id").agg(pl.col("question").n_unique())["question"].to_list() \
        == [3] * n
    assert rows["gold_answer"].null_count() == 3 * n
    assert rows["facts"].null_count() == 0
    # Verification: every question re-answered `samples` times by the writer.
    assert gen.verify_rows == 3 * n
    assert gen.verify_requests == gen.verify_answered == 3 * n * spec.generate.verify.samples

    cur = curate(spec, workspace, run_id)
    assert cur.generated == 3 * n
    # The two "in total" questions per passage are re-answered the same way; the lookup the
    # re-answering solver cannot do is dropped as unverified. No question is dropped for
    # disagreeing with another question of its passage.
    assert cur.drops_by_reason.get("disagrees_with_majority", 0) == 0
    assert cur.unverified == cur.drops_by_reason["unverified"] == n
    assert cur.kept == 2 * n and cur.verified == 3 * n
    kept = workspace.store.scan(workspace.shards(
        workspace.latest_stage("curate", run_id=run_id), "train")).collect().to_dicts()
    for row in kept:
        prompt = json.loads(row["prompt"])
        text = " ".join(m["content"] for m in prompt)
        assert row["question"] in text and row["passage"] in text
        assert SYSTEM not in text
        # What the student actually sees: the tokenized training example.
        (example,) = ex_mod.row_examples(row, tok, "cot", 512)
        shown = tok.decode([t for t, lab in zip(example.input_ids, example.labels)
                            if lab == ex_mod.IGNORE])
        target = tok.decode([t for t in example.labels if t != ex_mod.IGNORE])
        assert row["question"] in shown and SYSTEM not in shown
        assert target.startswith(row["rationale"].strip()) and f"Answer: {row['answer']}" in target

    result = train(spec, workspace, run_id)
    assert result.rows == 2 * n and result.steps == 2
    assert result.examples_by_target == {"rationale": 2 * n}
    assert result.eval_rows >= 1 and result.student_accuracy is not None


def test_facts_as_the_students_context(tmp_path, workspace, tiny_base):
    with FakeOpenAI(responder=responder()) as srv:
        spec = curriculum(tmp_path, srv.base_url, tiny_base, student_context="facts", verify=None)
        run_id = workspace.start_run(spec, "run").id
        generate(spec, workspace, run_id, progress_bar=False)
    stage = workspace.latest_stage("generate", run_id=run_id)
    rows = workspace.store.scan(workspace.shards(stage, "generated")).collect().to_dicts()
    for row in rows:
        user = json.loads(row["prompt"])[-1]["content"]
        assert row["question"] in user and row["passage"] not in user
        assert user.startswith("Text: ") and " has " in user  # the extracted facts


def test_a_staircase_of_disentangle_rounds_is_refused_at_validate(tmp_path):
    from flows.prompting.check import check_generate_template

    spec = curriculum(tmp_path, "http://127.0.0.1:9/v1", tmp_path)
    assert check_generate_template(spec) == []
    more = spec_mod.with_changes(spec, {"staircase.rounds": 2})
    (problem,) = check_generate_template(more)
    assert problem.startswith("staircase.rounds: template 'disentangle' trains students on "
                              "'rationale'")
