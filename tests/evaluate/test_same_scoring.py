"""The staircase's gate compares two numbers: the teacher's held-out accuracy and the promoted
quantized student's. Both must come from one function, on the same rows, with the same template
and decoding; this runs the real teacher scoring and the real quantize stage and checks."""

from __future__ import annotations

import pytest

from flows.evaluate import score
from flows.models import model_path
from flows.spec import Curriculum, TeacherSpec
from storage.tables import Model
from tests.helpers.tiny_llama import save_tiny


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = score.answer_accuracy

    def spy(engine, rows, template, *, few_shot, max_new_tokens, description="evaluate"):
        seen.append({"engine": type(engine).__name__, "path": str(getattr(engine, "path", "")),
                     "rows": [r["id"] for r in rows], "template": template.content_hash,
                     "few_shot": few_shot, "max_new_tokens": max_new_tokens})
        return real(engine, rows, template, few_shot=few_shot, max_new_tokens=max_new_tokens,
                    description=description)

    monkeypatch.setattr(score, "answer_accuracy", spy)
    return seen


def test_teacher_and_quantized_student_are_scored_by_one_function(workspace, tmp_path, calls,
                                                                  monkeypatch):
    from flows.evaluate.batched import BatchedDecoder

    batched = []  # (file, conversations, replies) of every batched decode
    real_generate = BatchedDecoder.generate

    def spy(self, conversations, max_new_tokens):
        texts, counts = real_generate(self, conversations, max_new_tokens)
        batched.append((self.llm.model_path, conversations, texts))
        return texts, counts

    monkeypatch.setattr(BatchedDecoder, "generate", spy)
    from flows.ingest import ingest
    from flows.quantize import quantize
    from flows.staircase import score_teacher

    spec = Curriculum.model_validate({
        "name": "same-scoring",
        "corpus": {"format": "demo", "demo": {"rows": 40, "seed": 1}, "eval_fraction": 0.25},
        "quantization": {"gguf_types": ["Q8_0"], "int8_absmax": None, "int4_group_size": None,
                         "imatrix_tokens": 0, "eval_rows": 4, "max_new_tokens": 5,
                         "speed_tokens": 4},
    })
    run_id = workspace.start_run(spec, "run").id
    ingest(spec, workspace, run_id)
    folder = save_tiny(tmp_path / "student")
    workspace.catalog.add_model(Model(run_id=run_id, round_index=0, name="tiny", kind="student",
                                      format="hf", path=str(folder)))
    result = quantize(spec, workspace, run_id)
    q8 = workspace.catalog.get(Model, result.artifact("Q8_0").model_id)

    # The Q8_0 file as a local teacher, asked without worked examples (as a promoted student is).
    teacher = TeacherSpec(backend="llamacpp", model=f"catalog:{q8.id}", few_shot=False)
    teacher_acc = score_teacher(spec, workspace, run_id, teacher, 1)

    q8_file = str(model_path(q8.path))
    student_call = next(c for c in calls if c["path"] == q8_file)
    teacher_call = calls[-1]
    assert teacher_call is not student_call and teacher_call["path"] == q8_file
    assert {k: v for k, v in teacher_call.items()} == student_call
    assert teacher_call["engine"] == "GGUFEngine" and len(teacher_call["rows"]) == 4
    # Same function, same file, same rows: the same number.
    assert teacher_acc == result.artifact("Q8_0").accuracy

    # Both were decoded in batches (where this CPU's steps of several rows are exact, as on
    # every machine measured; else one at a time), and each reply is the one
    # create_chat_completion gives alone.
    from flows.evaluate.engines import GGUFEngine
    from tests.helpers.probed import probed_width

    q8_batches = [b for b in batched if b[0] == q8_file]
    if probed_width(q8_file) == 1:
        assert q8_batches == []
        return
    assert len(q8_batches) == 2 and all(len(b[1]) == 4 for b in q8_batches)
    alone = GGUFEngine(q8_file, width=1)
    try:
        assert alone.generate_one_at_a_time(q8_batches[0][1], 5)[0] == q8_batches[0][2]
    finally:
        alone.close()
