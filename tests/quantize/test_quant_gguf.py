"""GGUF export: a tiny random Llama written by our exporter loads in llama.cpp, tokenizes the same
and gives the same logits as transformers; llama.cpp's quantizer runs on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flows.quantize.gguf_export import (
    FLOAT_TYPES,
    ExportError,
    export_gguf,
    gguf_weight_stats,
    interleave_rope_rows,
    llama_quantize,
)
from tests.helpers.tiny_llama import tiny_llama, tiny_tokenizer

TEXT = "Vorla has 3 red lanterns and 5 blue lanterns. How many lanterns does Vorla have?"
# F32 weights and an F32 KV cache: what remains is float summation order. Measured max abs
# difference 1.5e-5 on logits of magnitude ~8; 1e-3 leaves room for other CPUs' SIMD paths.
LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    return tiny_llama(tok), tok


def test_the_spec_accepts_exactly_the_float_types_the_exporter_writes():
    # spec.py spells the Literal out rather than importing it (the exporter pulls in torch).
    from typing import get_args

    from flows.spec import QuantizationSpec

    assert get_args(QuantizationSpec.model_fields["gguf_float"].annotation) == FLOAT_TYPES


def _llama(path, **kw):
    from flows.llama_cpu import open_llama

    # type_k/type_v 0 = GGML_TYPE_F32: the default F16 cache alone costs ~1e-2 in logits.
    return open_llama(path, n_ctx=256, logits_all=True, verbose=False, type_k=0, type_v=0,
                      n_threads=1, **kw)


def _logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.asarray(llm.scores[: len(ids)])


def _both_logits(model, tok, path):
    """TEXT through llama.cpp (the GGUF at path) and through transformers (model): both logits,
    and llama.cpp's own tokenization of TEXT (from the exported vocab and merges)."""
    ids = tok(TEXT)["input_ids"]
    llm = _llama(path)
    try:
        llama_ids = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
        got = _logits(llm, ids)
    finally:
        llm.close()
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    return got, want, llama_ids


def test_the_same_weights_from_two_folders_export_to_the_same_bytes(tiny, tmp_path, monkeypatch):
    """A file's content hash is its response-cache identity as a teacher: a rerun that trains the
    same student in another run's folder must write the same file, or its teacher is re-asked."""
    from gguf import GGUFReader

    from flows.models import file_identity

    model, tok = tiny
    paths = []
    for run in ("run-a", "run-b"):
        # The module's shared tiny model: monkeypatch puts its folder back afterwards.
        monkeypatch.setattr(model.config, "_name_or_path", str(tmp_path / "students" / run))
        paths.append(export_gguf(model, tok, tmp_path / run / "climb-r0-cot-F32.gguf",
                                 float_type="F32"))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert file_identity(paths[0]) == file_identity(paths[1])
    field = GGUFReader(str(paths[0])).fields["general.name"]
    assert bytes(field.parts[field.data[0]]).decode() == "climb-r0-cot"


def test_interleave_rope_rows_pairs_the_two_halves_of_each_head():
    w = np.arange(8).reshape(8, 1)  # 2 heads of 4 rows: halves [0,1|2,3] and [4,5|6,7]
    assert interleave_rope_rows(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_f32_export_matches_transformers_logits(tiny, tmp_path):
    model, tok = tiny
    path = export_gguf(model, tok, tmp_path / "tiny-F32.gguf", float_type="F32")
    got, want, llama_ids = _both_logits(model, tok, path)
    assert llama_ids == tok(TEXT)["input_ids"]  # llama.cpp's tokenizer agrees with HF's
    assert np.abs(want).max() > 1.0  # not a degenerate all-zero model
    assert np.abs(got - want).max() < LOGIT_TOLERANCE


def test_without_the_rope_interleave_logits_would_not_match(tiny, tmp_path, monkeypatch):
    # Guards the test above: it can tell a wrong Q/K layout from a right one.
    from flows.quantize import gguf_export

    model, tok = tiny
    monkeypatch.setattr(gguf_export, "interleave_rope_rows", lambda w, n: w)
    path = export_gguf(model, tok, tmp_path / "wrong.gguf", float_type="F32")
    got, want, _ = _both_logits(model, tok, path)
    assert np.abs(got - want).max() > 100 * LOGIT_TOLERANCE


def test_export_metadata_and_untied_head(tmp_path):
    from gguf import GGUFReader

    tok = tiny_tokenizer()
    model = tiny_llama(tok, tied=False)
    path = export_gguf(model, tok, tmp_path / "untied.gguf")
    reader = GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items()
              if k not in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges",
                           "tokenizer.ggml.token_type")}
    assert fields["general.architecture"] == "llama"
    assert fields["llama.block_count"] == 2
    assert fields["llama.attention.head_count_kv"] == 2
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["output.weight"] == "F16" and types["token_embd.weight"] == "F16"
    assert types["blk.0.attn_norm.weight"] == "F32"  # norms stay F32
    got, want, _ = _both_logits(model, tok, path)
    assert np.abs(got - want).max() < 0.05  # F16 weights: a looser bound than F32


def test_bf16_export_rounds_the_matrices_to_bfloat16_and_matches_their_logits(tiny, tmp_path):
    from gguf import GGUFReader

    model, tok = tiny
    path = export_gguf(model, tok, tmp_path / "tiny-BF16.gguf", float_type="BF16")
    reader = GGUFReader(str(path))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "BF16" and types["blk.0.ffn_up.weight"] == "BF16"
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert reader.fields["general.file_type"].contents() == 32  # LLAMA_FTYPE_MOSTLY_BF16
    # llama.cpp's CPU kernel for BF16 weights rounds the activations to bfloat16 too (its
    # vec_dot type), so the logits move more than F16's: measured 0.058 on logits of size ~3.
    got, want, _ = _both_logits(model, tok, path)
    assert np.abs(got - want).max() < 0.15
    assert np.abs(got - want).max() > LOGIT_TOLERANCE  # rounded, not the F32 weights


def test_llama_cpp_quantizer_makes_q8_0(tiny, tmp_path):
    model, tok = tiny
    f16 = export_gguf(model, tok, tmp_path / "tiny-F16.gguf")
    q8 = llama_quantize(f16, tmp_path / "tiny-Q8_0.gguf", "Q8_0", threads=1)
    stats = gguf_weight_stats(q8)
    assert stats["params_by_type"].get("Q8_0", 0) > 0.5 * stats["params"]
    assert stats["bits_per_weight"] < gguf_weight_stats(f16)["bits_per_weight"]
    assert q8.stat().st_size < f16.stat().st_size
    assert not list(tmp_path.glob(".tmp-*"))
    # What the quantize stage reports, read from the open model, is the reader's number.
    from flows.evaluate.engines import GGUFEngine

    for path in (f16, q8):
        engine = GGUFEngine(path, threads=1)
        try:
            assert engine.bits_per_weight() == pytest.approx(
                gguf_weight_stats(path)["bits_per_weight"], rel=1e-12)
        finally:
            engine.close()


def test_unknown_quant_type_and_unsupported_models_are_named(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ExportError, match="Q9_X"):
        llama_quantize(tmp_path / "x.gguf", tmp_path / "y.gguf", "Q9_X")
    model.config.model_type = "mistral"
    try:
        with pytest.raises(ExportError, match="model_type='mistral'"):
            export_gguf(model, tok, tmp_path / "m.gguf")
    finally:
        model.config.model_type = "llama"
