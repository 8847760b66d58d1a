"""vLLM's offline engine on a GPU (skipped without one; vllm is the optional extra)."""

from __future__ import annotations

import pytest

from flows.generate import generate
from flows.spec import Curriculum

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_vllm_offline_engine_generates_a_whole_batch(workspace):
    pytest.importorskip("vllm")
    from flows.models import resolve_model

    spec = Curriculum.model_validate({
        "name": "vllm-gen", "corpus": {"format": "demo", "demo": {"rows": 40}},
        "teacher": {"backend": "vllm", "model": str(resolve_model("smollm2-135m")),
                    "samples": 2, "top_logprobs": 2, "max_tokens": 64},
        "generate": {"batch_rows": 16}})
    run_id = workspace.start_run(spec, "generate").id
    summary = generate(spec, workspace, run_id, progress_bar=False)
    assert summary.complete and summary.rows_written == summary.requests
