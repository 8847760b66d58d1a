"""Quantization: absmax int8 and group-wise int4 for transformers models (absmax.py, int4 in the
same module), GGUF export + llama.cpp k-quants (gguf_export.py), GPTQ on a GPU (gptq.py), and the
measurements every artifact gets (measure.py)."""
