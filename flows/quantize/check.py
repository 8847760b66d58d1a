"""Pre-flight checks of the `quantization` section for `stairs validate`."""

from __future__ import annotations


def quantization_runs_here(spec) -> list[str]:
    q = spec.quantization
    problems = []
    if q.gguf_types:
        import llama_cpp

        for t in q.gguf_types:
            if getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{t}", None) is None:
                problems.append(f"quantization.gguf_types: this llama.cpp build has no {t}")
    if q.gptq_bits:
        from flows.quantize.gptq import gptq_available

        why = gptq_available()
        if why:
            problems.append(f"quantization.gptq_bits: {why}")
    return problems
