"""The shipped rationale template on the real embedded teacher (SmolLM2-135M, llama.cpp in-process):
its replies must stay in the format the parser reads. Measured: 97-100% parseable greedy."""

from __future__ import annotations

import pytest

from flows.embedded import embedded_gguf
from flows.ingest import demo
from flows.prompting import load_template

pytestmark = pytest.mark.slow


def test_embedded_teacher_follows_the_rationale_format():
    from flows.llama_cpu import open_llama

    llm = open_llama(embedded_gguf(), n_ctx=2048, n_threads=1, verbose=False)
    template = load_template("rationale")
    parsed = []
    for i, row in enumerate(demo.generate(4, tasks=["sum", "lookup"])):
        reply = llm.create_chat_completion(messages=template.render({**row, "id": str(i)}),
                                           temperature=0.0, max_tokens=96)
        choice = reply["choices"][0]
        parsed.append(template.parse(choice["message"]["content"], choice["finish_reason"])[0])
    assert sum(p["error"] is None for p in parsed) >= 3, parsed
    assert all(p["answer"] is None or len(p["answer"]) < 40 for p in parsed)
