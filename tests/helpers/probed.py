"""The rows per decode step GGUFEngine's probe passes for a file on this CPU, at most `width`
(GGUFEngine's own default unless given): what tests of batched decoding expect instead of a
number that holds only where llama.cpp's kernels allow it."""

from __future__ import annotations


def probed_width(gguf, width: int | None = None, threads: int | None = None) -> int:
    from flows.evaluate.engines import BATCH_WIDTH, GGUFEngine

    engine = GGUFEngine(gguf, threads=threads, width=width or BATCH_WIDTH)
    try:
        return engine.batched_decoder().width
    finally:
        engine.close()
