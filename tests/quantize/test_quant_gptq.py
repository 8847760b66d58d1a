"""GPTQ through gptqmodel on a tiny real Llama (needs CUDA and the gptq extra)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def test_gptq_quantizes_and_loads_a_tiny_llama(tmp_path):
    pytest.importorskip("gptqmodel")
    import torch

    from flows.quantize.gptq import gptq_quantize, load_gptq
    from tests.helpers.tiny_llama import TEXTS, save_tiny, tiny_tokenizer

    student = save_tiny(tmp_path / "student")
    out = gptq_quantize(student, tmp_path / "gptq", bits=4, group_size=32,
                        calibration=TEXTS[:16], batch_size=4)
    model = load_gptq(out)
    ids = torch.tensor([tiny_tokenizer()("Vorla has 3 red lanterns")["input_ids"]],
                       device=model.device)
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.isfinite(logits).all()
