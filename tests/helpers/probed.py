"""The rows per decode step GGUFEngine's probe passes for a file on this CPU (8 for the tiny test
files and the embedded teacher on every machine measured): what tests of batched decoding
expect instead of a number that holds only where llama.cpp's kernels allow it."""

from __future__ import annotations


def probed_width(gguf, width: int = 8, threads: int | None = None) -> int:
    from flows.evaluate.engines import GGUFEngine

    engine = GGUFEngine(gguf, threads=threads, width=width)
    try:
        return engine.batched_decoder().width
    finally:
        engine.close()
