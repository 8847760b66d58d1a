"""The quantize stage end to end on a tiny real student: artifacts made, registered with lineage,
measured, tabled; a second call reuses the finished stage."""

from __future__ import annotations

import json

import pytest

from flows.models import model_path
from flows.quantize import quantize
from flows.spec import Curriculum
from storage.tables import Model
from tests.helpers.tiny_llama import save_tiny


def _spec(**quantization) -> Curriculum:
    return Curriculum.model_validate({
        "name": "quant-test",
        "corpus": {"format": "demo", "demo": {"rows": 40, "seed": 1}, "eval_fraction": 0.25},
        "quantization": {"eval_rows": 3, "max_new_tokens": 6, "speed_tokens": 4,
                         **quantization},
        "staircase": {"promote": "F16"},  # always made, whatever the types under test
    })


@pytest.fixture
def run_with_student(workspace, tmp_path):
    from flows.ingest import ingest

    spec = _spec(gguf_types=["Q8_0"], int4_group_size=16)
    run_id = workspace.start_run(spec, "quantize").id
    ingest(spec, workspace, run_id)
    folder = save_tiny(tmp_path / "student")
    student = workspace.catalog.add_model(Model(run_id=run_id, round_index=0, name="tiny",
                                                kind="student", format="hf", path=str(folder)))
    return spec, run_id, student


def test_quantize_makes_registers_and_measures_every_artifact(workspace, run_with_student,
                                                              monkeypatch):
    import flows.quantize.flow as stage

    spec, run_id, student = run_with_student
    opened = []

    class Recorded(stage.GGUFEngine):
        def __init__(self, path, *args, **kwargs):
            opened.append(path.name)
            super().__init__(path, *args, **kwargs)

    monkeypatch.setattr(stage, "GGUFEngine", Recorded)
    summary = quantize(spec, workspace, run_id)
    # The float file is run once: the others' fidelity reads the logits it saved then.
    assert sorted(opened) == ["tiny-F16.gguf", "tiny-Q8_0.gguf"]
    f16 = next(m for m in workspace.catalog.models(run_id) if m.quant == "F16")
    assert not list(model_path(f16.path).parent.glob(".float-logits*"))  # removed when done

    assert summary.student_id == student.id and not summary.student_is_base_stand_in
    quants = [r.quant for r in summary.table]
    assert quants == ["F16", "Q8_0", "int8-absmax-channel", "int4-g16-sym"]
    models = {m.id: m for m in workspace.catalog.models(run_id) if m.kind == "quantized"}
    assert len(models) == 4
    for row in summary.table:
        m = models[row.model_id]
        assert m.parent_id == student.id and m.round_index == 0
        assert m.bytes > 0 and m.quant == row.quant
        assert 0.0 <= row.accuracy <= 1.0
        assert row.perplexity > 1.0 and row.tokens_per_s > 0
    by_quant = {r.quant: r for r in summary.table}
    assert by_quant["Q8_0"].bits_per_weight < by_quant["F16"].bits_per_weight
    assert 8.0 <= by_quant["Q8_0"].bits_per_weight < 9.0
    # Same student, same tokens: F16 and Q8_0 perplexities are close, int4 further off.
    assert by_quant["Q8_0"].perplexity == pytest.approx(by_quant["F16"].perplexity, rel=0.02)
    # Fidelity to the F16 file's next-token distributions: Q8_0 all but identical, int4 further.
    assert by_quant["F16"].kl_divergence is None
    assert 0.0 <= by_quant["Q8_0"].kl_divergence < 0.01
    assert by_quant["int4-g16-sym"].kl_divergence > 3 * by_quant["Q8_0"].kl_divergence
    assert by_quant["Q8_0"].same_top_token > 0.9

    metrics = workspace.catalog.metrics(run_id=run_id)
    names = {(m.model_id, m.name) for m in metrics}
    for model_id in models:
        for name in ("accuracy", "perplexity", "tokens_per_s", "bits_per_weight", "size_bytes"):
            assert (model_id, name) in names
        assert ((model_id, "kl_divergence") in names) == (models[model_id].quant != "F16")
    assert all(json.loads(m.meta_json)["table"] == "quantization" for m in metrics)
    stage = workspace.latest_stage("quantize", run_id=run_id, round_index=0)
    [shard] = workspace.shards(stage, "quantization-table")
    assert workspace.store.table([shard]).num_rows == 4

    again = quantize(spec, workspace, run_id)
    assert again.table == summary.table
    assert len([m for m in workspace.catalog.models(run_id) if m.kind == "quantized"]) == 4


def test_a_non_hf_student_is_refused_with_its_id(workspace, run_with_student):
    spec, run_id, _ = run_with_student
    gguf_student = workspace.catalog.add_model(Model(run_id=run_id, name="g", kind="student",
                                                     format="gguf", path="/nowhere.gguf"))
    with pytest.raises(ValueError, match=f"student model {gguf_student.id} has format 'gguf'"):
        quantize(spec, workspace, run_id, student=gguf_student)


def test_spec_rejects_unknown_llama_cpp_types():
    with pytest.raises(ValueError, match="Q9_X"):
        _spec(gguf_types=["Q9_X"])


def test_validate_refuses_gptq_where_it_cannot_run():
    from flows.preflight import problems as preflight
    from flows.quantize.gptq import gptq_available

    problems = [p for p in preflight(_spec(gptq_bits=4)) if p.startswith("quantization.")]
    why = gptq_available()
    assert problems == ([] if why is None else [f"quantization.gptq_bits: {why}"])
    assert not [p for p in preflight(_spec()) if p.startswith("quantization.")]


def test_k_quants_get_an_importance_matrix_from_the_rounds_training_text(workspace, tmp_path):
    import pyarrow as pa
    from gguf import GGUFReader

    from flows.ingest import ingest
    from flows.prompting import load_template

    spec = _spec(gguf_types=["Q8_0", "Q4_0"], int8_absmax=None, int4_group_size=None,
                 imatrix_tokens=64)
    run_id = workspace.start_run(spec, "quantize").id
    ingest(spec, workspace, run_id)
    template = load_template("rationale")
    rows = [{"id": f"t{i}", "messages": json.dumps(template.render(r)), "answer": r["answer"],
             "rationale": "Add them up."}
            for i, r in enumerate(workspace.store.table(workspace.shards(
                workspace.latest_stage("ingest", run_id=run_id), "corpus")).to_pylist()[:4])]
    with workspace.stage(run_id, "curate", round_index=0) as st:
        workspace.store.write(pa.Table.from_pylist(rows), stage=st.stage, kind="train")
    folder = save_tiny(tmp_path / "student")
    workspace.catalog.add_model(Model(run_id=run_id, round_index=0, name="tiny", kind="student",
                                      format="hf", path=str(folder)))

    summary = quantize(spec, workspace, run_id)
    assert summary.imatrix_tokens == 64
    assert summary.imatrix_dataset == f"{run_id} round 0 curated train rows"
    models = {m.quant: m for m in workspace.catalog.models(run_id) if m.kind == "quantized"}
    used = {q: json.loads(m.params_json)["imatrix_tokens"] for q, m in models.items()}
    assert used == {"F16": None, "Q8_0": None, "Q4_0": 64}  # Q8_0's quantizer ignores it
    fields = GGUFReader(model_path(models["Q4_0"].path)).fields
    assert fields["quantize.imatrix.chunks_count"].contents() >= 1
    assert "quantize.imatrix.dataset" not in GGUFReader(model_path(models["Q8_0"].path)).fields


def test_without_curated_rows_the_corpus_calibrates_and_zero_tokens_turns_it_off(
        workspace, tmp_path):
    from flows.ingest import ingest

    for tokens, want in ((32, 32), (0, None)):
        spec = _spec(gguf_types=["Q4_0"], int8_absmax=None, int4_group_size=None,
                     imatrix_tokens=tokens)
        run_id = workspace.start_run(spec, "quantize").id
        ingest(spec, workspace, run_id)
        workspace.catalog.add_model(Model(run_id=run_id, round_index=0, name="tiny",
                                          kind="student", format="hf",
                                          path=str(save_tiny(tmp_path / f"s{tokens}"))))
        summary = quantize(spec, workspace, run_id)
        assert summary.imatrix_tokens == want
        if want:
            assert summary.imatrix_dataset == f"{run_id} corpus"


def test_the_spec_names_the_artifacts_the_stage_plans(tmp_path):
    """staircase.promote is validated against QuantizationSpec.artifact_quants(): it must be the
    list plan_artifacts makes."""
    from flows.quantize.flow import plan_artifacts

    spec = _spec(gguf_types=["Q8_0", "Q4_K_M"], int8_absmax="tensor", int4_group_size=64,
                 int4_symmetric=False)
    student = Model(name="s", kind="student", format="hf", path="x")
    planned = [a["quant"] for a in plan_artifacts(spec, student, tmp_path)]
    assert planned == spec.quantization.artifact_quants()
