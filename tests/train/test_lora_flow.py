"""The quickstart's LoRA student through the stage flows: ingest -> generate (the loopback fake
OpenAI server as teacher) -> curate -> train -> quantize, on the tiny test model. The effect
asserted is LoRA's: the saved student is a plain merged model whose targeted projections moved
by a low-rank update while everything LoRA does not wrap (embeddings, norms) kept the base's
exact values, and the quantize stage turns that student into a scored GGUF file."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from flows import spec as spec_mod
from flows.curate import curate
from flows.generate import generate
from flows.ingest import ingest
from flows.models import model_path
from flows.quantize import quantize
from flows.train import train
from storage.tables import Model
from tests.helpers.openai_server import FakeOpenAI
from tests.helpers.tiny_student import save_tiny_base


@pytest.fixture
def curriculum(tmp_path):
    def make(base_url: str):
        doc = yaml.safe_load(open("curricula/quickstart.yaml"))
        doc["corpus"]["demo"]["rows"] = 40
        doc["teacher"] = {"backend": "openai", "model": "fake", "base_url": base_url,
                          "temperature": 0.0, "samples": 1, "max_tokens": 64}
        doc["generate"]["max_rows"] = 12
        doc["student"].update({"base": str(save_tiny_base(tmp_path / "tiny-base")),
                               "max_steps": 4, "batch_size": 2, "max_length": 256,
                               # below the tiny model's narrowest projection (16), so a
                               # low-rank update is visible as one
                               "lora_r": 4})
        doc["quantization"].update({"gguf_types": ["Q8_0"], "eval_rows": 4,
                                    "max_new_tokens": 8, "speed_tokens": 4})
        doc["staircase"]["rounds"] = 1
        path = tmp_path / "quickstart-lora.yaml"
        path.write_text(yaml.safe_dump(doc))
        return spec_mod.load(path)
    return make


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(str(next(model_path(str(folder)).glob("*.safetensors"))))


def test_quickstart_student_is_a_merged_low_rank_update(workspace, curriculum):
    with FakeOpenAI() as srv:
        spec = curriculum(srv.base_url)
        assert spec.student.method == "lora"  # the shipped curriculum, not an override
        run_id = workspace.start_run(spec, "run").id
        ingest(spec, workspace, run_id)
        assert generate(spec, workspace, run_id, progress_bar=False).complete
    assert curate(spec, workspace, run_id).kept > 0
    result = train(spec, workspace, run_id)
    assert result.steps == 4

    student = workspace.catalog.get(Model, result.student_model_id)
    base = workspace.catalog.get(Model, result.base_model_id)
    after, before = _weights(student.path), _weights(base.path)
    # Merged: the same tensors as the base, no adapter left to load.
    assert set(after) == set(before)
    assert not any("lora_" in name for name in after)
    targets = tuple(spec.student.lora_targets)
    moved = [n for n in after if n.split(".")[-2] in targets]
    assert len(moved) == 7 * 2  # seven projections in each of the tiny model's two layers
    for name in moved:
        delta = (after[name] - before[name]).double()
        assert delta.abs().max() > 0, f"{name} did not train"
        # A LoRA update is B @ A: its rank is at most r, below the matrix's own.
        assert torch.linalg.matrix_rank(delta, atol=1e-7).item() <= spec.student.lora_r \
            < min(delta.shape)
    for name in set(after) - set(moved):
        assert torch.equal(after[name], before[name]), f"{name} changed outside LoRA"

    summary = quantize(spec, workspace, run_id)
    assert summary.student_id == student.id and not summary.student_is_base_stand_in
    assert [r.quant for r in summary.table] == ["BF16", "Q8_0"]
    for row in summary.table:
        assert row.accuracy is not None and row.tokens_per_s > 0
        assert workspace.catalog.get(Model, row.model_id).parent_id == student.id
