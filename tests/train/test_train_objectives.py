"""Every objective through the stage flows (generate -> curate -> train, no Prefect server), each
asserting the objective's effect, not only that training ran: the loss terms it optimises, the
teacher candidates per target token, the curriculum order. Tiny models; the teacher is the
loopback fake OpenAI server (tests/helpers/openai_server.py) speaking the student's tokenizer."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from flows.curate import curate
from flows.generate import generate
from flows.ingest import ingest
from flows.spec import Curriculum
from flows.train import examples as ex_mod
from flows.train import train
from tests.helpers.openai_server import FakeOpenAI
from tests.helpers.tiny_student import save_tiny_base, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture
def base(tok, tmp_path):
    folder = save_tiny_base(tmp_path / "tiny-base", tok)
    return str(folder)


def curated_run(ws, spec: Curriculum, server: FakeOpenAI) -> str:
    """ingest -> generate (through the fake server) -> curate; the run's id."""
    run_id = ws.start_run(spec, "run").id
    ingest(spec, ws, run_id)
    gen = generate(spec, ws, run_id, progress_bar=False)
    assert gen.complete
    cur = curate(spec, ws, run_id)
    assert cur.kept >= 6, cur.drops_by_reason
    return run_id


def spec_of(base: str, server: FakeOpenAI, student: dict, teacher: dict | None = None
            ) -> Curriculum:
    return Curriculum.model_validate({
        "name": "objectives", "corpus": {"format": "demo", "demo": {"rows": 40, "seed": 2},
                                         "eval_fraction": 0.2},
        "teacher": {"backend": "openai", "model": "fake", "base_url": server.base_url,
                    "temperature": 0.0, **(teacher or {})},
        "generate": {"max_rows": 12},
        "curation": {"decontaminate": {"enabled": False}, "near_dedup": {"enabled": False}},
        "student": {"base": base, "batch_size": 2, "learning_rate": 2e-2, "eval_rows": 1,
                    "eval_max_new_tokens": 2, "evaluate_base": False, "warmup_ratio": 0.0,
                    **student}})


def train_rows_of(ws, run_id: str) -> list[dict]:
    return ws.store.table(ws.stage_shards(run_id, "curate", "train", round_index=0)).to_pylist()


def test_kd_topk_from_an_openai_endpoint_gives_five_candidates_and_a_falling_kd_term(
        workspace, tok, base):
    """teacher.top_logprobs: 5 through a real HTTP endpoint in the OpenAI layout: the stored rows
    give the student 5 teacher candidates for every target token, and training minimises a
    non-zero KD term that falls."""
    with FakeOpenAI(tokenizer=tok) as server:
        spec = spec_of(base, server, {"objective": "kd", "kd_top_k": 5, "max_steps": 16},
                       {"top_logprobs": 5})
        run_id = curated_run(workspace, spec, server)
    rows = train_rows_of(workspace, run_id)
    built = ex_mod.build(rows, tok, "kd", spec.student.max_length, top_k=5)
    for group in built.groups:
        ex = group[0]
        targets = [i for i, label in enumerate(ex.labels) if label >= 0]
        *teacher_tokens, eos = targets  # the end-of-turn token is a CE-only target
        assert ex.labels[eos] == tok.eos_token_id and ex.topk_ids[eos] == [-1] * 5
        for i in teacher_tokens:
            assert len(set(ex.topk_ids[i])) == 5 and min(ex.topk_ids[i]) >= 0
            assert ex.topk_ids[i][0] == ex.labels[i]  # greedy: the teacher's best is its token
        assert tok.decode([ex.labels[i] for i in teacher_tokens]) == rows[
            built.groups.index(group)]["response"]
    result = train(spec, workspace, run_id)
    assert set(result.loss_terms) == {"ce", "kd"}
    first, last = result.loss_terms["kd"]
    assert first > 0.1 and last < 0.7 * first


TARGETS = {  # what the student is taught to answer, per objective (flows/train/examples.py)
    "label": lambda r: [f"Answer: {r['answer']}"],
    "cot": lambda r: [f"{r['rationale'].strip()}\nAnswer: {r['answer']}"],
    "step_by_step": lambda r: [f"{r['rationale'].strip()}\nAnswer: {r['answer']}",
                               f"Answer: {r['answer']}"],
}
TERMS = {"label": {"ce"}, "cot": {"ce"}, "step_by_step": {"ce", "label_loss", "rationale_loss"}}


@pytest.mark.parametrize("objective", ["label", "cot", "step_by_step"])
def test_sft_objectives_teach_their_targets_with_their_loss_terms(workspace, tok, base,
                                                                  objective):
    with FakeOpenAI() as server:
        spec = spec_of(base, server, {"objective": objective, "max_steps": 4})
        run_id = curated_run(workspace, spec, server)
    rows = train_rows_of(workspace, run_id)
    built = ex_mod.build(rows, tok, objective, spec.student.max_length)
    for row, group in zip(rows, built.groups):
        taught = [tok.decode([t for t in ex.labels if t >= 0]) for ex in group]
        assert taught == [t + tok.eos_token for t in TARGETS[objective](row)]
    # One epoch in curriculum order: curation's stages easiest first, a stage's rows (both tasks
    # of a step_by_step row together) in ceil(rows / batch) batches that never mix stages.
    per_stage = Counter(r["curriculum_stage"] for r in rows)
    assert len(per_stage) >= 2, per_stage
    epoch = sum(-(-n // 2) for n in per_stage.values())
    spec.student.max_steps = epoch
    result = train(spec, workspace, run_id)
    assert set(result.loss_terms) == TERMS[objective]
    assert result.examples == len(rows) * len(TARGETS[objective](rows[0]))
    assert result.order == "curriculum" and result.steps == epoch
    assert [(r["stage"], r["steps"][1] - r["steps"][0] + 1) for r in result.stage_runs] == [
        (s, -(-per_stage[s] // 2)) for s in sorted(per_stage)]
    if objective == "step_by_step":  # a*label + (1-a)*rationale, a = 0.5
        label, rationale = (result.loss_terms[k][-1] for k in ("label_loss", "rationale_loss"))
        assert result.final_loss == pytest.approx(0.5 * label + 0.5 * rationale, rel=1e-4)


def test_the_base_is_scored_once_and_every_later_train_stage_reports_that_score(
        workspace, tok, base):
    """evaluate_base on the same held-out rows twice (two objectives of one run, as
    bench/student_objectives.py trains them): the second stage reports the first one's recorded
    base score instead of scoring the base again, or reporting none."""
    with FakeOpenAI() as server:
        spec = spec_of(base, server, {"objective": "cot", "max_steps": 1, "evaluate_base": True})
        run_id = curated_run(workspace, spec, server)
    first = train(spec, workspace, run_id)
    spec.student.objective = "label"
    second = train(spec, workspace, run_id)
    assert second.student_model_id != first.student_model_id
    assert first.base_accuracy is not None and second.base_accuracy == first.base_accuracy
    scores = [m for m in workspace.catalog.metrics(model_id=first.base_model_id)
              if m.name == "eval_accuracy"]
    assert len(scores) == 1 and scores[0].value == first.base_accuracy


def test_logit_kd_from_a_local_teacher_into_a_cut_student(workspace, tok, base, tmp_path):
    """student.kd_teacher (same tokenizer) through the train stage: a 4-layer base cut to 2 layers
    (student.keep_layers) learns the teacher's full next-token distributions; the KD term is
    present, non-zero and falls."""
    import torch

    from flows.models import load

    teacher = tmp_path / "teacher"
    model = tiny_llama(tok, seed=7, layers=2)
    with torch.no_grad():  # weights larger than the init's, so its distributions are not flat
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(teacher)
    tok.save_pretrained(teacher)
    big = tmp_path / "four-layers"
    tiny_llama(tok, seed=1, layers=4).save_pretrained(big)
    tok.save_pretrained(big)
    with FakeOpenAI() as server:
        spec = spec_of(str(big), server, {"objective": "kd", "kd_teacher": str(teacher),
                                          "keep_layers": [0, 3], "kd_weight": 0.9,
                                          "max_steps": 16})
        run_id = curated_run(workspace, spec, server)
    result = train(spec, workspace, run_id)
    assert set(result.loss_terms) == {"ce", "kd"} and result.kd_rows == 0
    first, last = result.loss_terms["kd"]
    assert first > 0.1 and last < 0.85 * first
    student, _, _ = load(f"catalog:{result.student_model_id}", catalog=workspace.catalog)
    assert student.config.num_hidden_layers == 2


def test_a_kd_teacher_with_another_vocabulary_is_refused_at_validate_time(tmp_path, base):
    import yaml

    from flows.preflight import load_checked
    from flows.spec import SpecError
    from tests.helpers.tiny_llama import save_tiny  # a model on a different tokenizer

    other = save_tiny(tmp_path / "other-vocab")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": "c", "corpus": {"format": "demo"},
        "student": {"base": base, "objective": "kd", "kd_teacher": str(other)}}))
    with pytest.raises(SpecError, match=r"student\.kd_teacher: .*vocabulary .*must share the "
                                        r"student's tokenizer"):
        load_checked(path)


@pytest.mark.parametrize("cot_weight", [0.0, 0.5])
def test_on_policy_scores_the_students_own_samples_through_the_endpoint(workspace, tok, base,
                                                                        cot_weight):
    """objective on_policy: each step the student samples, the served teacher scores exactly
    those token ids (/v1/completions, echo, logprobs), and the reverse KL to it falls; with
    on_policy_cot_weight the curated rationales' cross-entropy joins it."""
    with FakeOpenAI(tokenizer=tok) as server:
        spec = spec_of(base, server, {"objective": "on_policy", "kd_top_k": 3,
                                      "on_policy_max_tokens": 8,
                                      "max_steps": 6 if cot_weight else 12,
                                      "on_policy_cot_weight": cot_weight})
        run_id = curated_run(workspace, spec, server)
        result = train(spec, workspace, run_id)
    rows = train_rows_of(workspace, run_id)
    # The teacher scores in the context it taught in (its worked examples included).
    asked = [ex_mod.prompt_ids(tok, json.loads(r["messages"])) for r in rows]
    assert result.teacher_requests == len(server.scored) > 0
    assert result.teacher_tokens == sum(map(len, server.scored))
    for sent in server.scored:  # a teacher prompt followed by the student's own tokens
        prompt = next(p for p in asked if sent[:len(p)] == p)
        assert len(sent) > len(prompt)
    assert result.misaligned_samples == 0
    assert set(result.loss_terms) == ({"reverse_kl", "ce"} if cot_weight else {"reverse_kl"})
    # The fake teacher's taste (a fixed next token) disagrees with the rationales' text, so in the
    # mix the two terms pull apart; alone, the reverse KL to it falls.
    first, last = result.loss_terms["ce" if cot_weight else "reverse_kl"]
    assert first > 0.5 and last < 0.9 * first


def test_on_policy_in_process_scores_with_the_teachers_gguf(workspace, tok, base, tmp_path):
    """on_policy_scorer: in_process: the llamacpp teacher's GGUF file scores the student's
    samples in-process (no server), with the same alignment checks and token accounting."""
    import torch

    from flows.quantize.gguf_export import export_gguf

    model = tiny_llama(tok, seed=7, layers=2)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    gguf = export_gguf(model, tok, tmp_path / "teacher-F32.gguf", float_type="F32")
    with FakeOpenAI() as server:
        data = spec_of(base, server, {"objective": "cot"})
        run_id = curated_run(workspace, data, server)
    doc = data.model_dump(mode="json")
    doc["teacher"] = {"backend": "llamacpp", "model": str(gguf)}
    doc["student"].update({"objective": "on_policy", "kd_top_k": 3, "on_policy_max_tokens": 8,
                           "max_steps": 6, "on_policy_scorer": "in_process"})
    result = train(Curriculum.model_validate(doc), workspace, run_id)
    assert result.on_policy_samples == 12 and result.misaligned_samples <= 2
    assert result.teacher_requests == result.on_policy_samples - result.misaligned_samples
    assert set(result.loss_terms) == {"reverse_kl"} and result.loss_terms["reverse_kl"][0] > 0
