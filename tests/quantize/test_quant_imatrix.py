"""Importance matrix: the statistic is llama-imatrix's (mean x² per input column of every matmul,
under llama.cpp's tensor names), and llama.cpp's quantizer really receives and applies it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flows.quantize.gguf_export import export_gguf, llama_quantize
from flows.quantize.imatrix import Imatrix, compute_imatrix
from tests.helpers.tiny_llama import TEXTS, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    return tiny_llama(tok), tok


def _ids(tok, n=3):
    return [tok(t)["input_ids"] for t in TEXTS[:n]]


def test_imatrix_is_the_mean_square_of_each_matmul_input(tiny):
    model, tok = tiny
    ids = _ids(tok)
    im = compute_imatrix(model, ids)
    assert im.tokens == sum(map(len, ids)) and im.chunks == 3

    layers = model.model.layers
    names = {f"blk.{i}.{t}.weight" for i in range(2) for t in
             ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(im.values) == names | {"token_embd.weight"}  # tied head: llama.cpp's name for it
    assert im.values["blk.0.ffn_down.weight"].shape == (128,)  # input columns, not rows

    # By hand: the first attention projections read input_layernorm(embeddings); the tied head
    # reads the final normed hidden states.
    with torch.no_grad():
        normed = [layers[0].input_layernorm(model.model.embed_tokens(torch.tensor(i)))
                  for i in ids]
        final = [model.model(input_ids=torch.tensor([i])).last_hidden_state[0] for i in ids]
    want_q = torch.cat(normed).pow(2).mean(dim=0).numpy()
    want_head = torch.cat(final).pow(2).mean(dim=0).numpy()
    np.testing.assert_allclose(im.values["blk.0.attn_q.weight"], want_q, rtol=1e-5)
    np.testing.assert_allclose(im.values["blk.0.attn_k.weight"], want_q, rtol=1e-5)
    np.testing.assert_allclose(im.values["token_embd.weight"], want_head, rtol=1e-4)


def test_imatrix_stops_at_its_token_budget(tiny):
    model, tok = tiny
    im = compute_imatrix(model, _ids(tok), max_tokens=10)
    assert im.tokens == 10 and im.chunks == 1
    with pytest.raises(ValueError, match="calibration tokens"):
        compute_imatrix(model, [])


def _dequantized(path, name):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    [t] = [t for t in GGUFReader(str(path)).tensors if t.name == name]
    return dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))


def test_llama_cpp_quantizer_applies_the_importance_per_column(tiny, tmp_path):
    """Columns declared important come out more exactly than without an imatrix, the others
    less: the array reaches llama.cpp under the right names, in column order."""
    from gguf import GGUFReader

    model, tok = tiny
    f16 = export_gguf(model, tok, tmp_path / "tiny-F16.gguf")
    name = "blk.0.ffn_up.weight"  # 64 input columns: llama.cpp's Q4_0 blocks of 32
    weights = np.ones(64, dtype=np.float32) * 1e-3
    weights[::4] = 1e3  # every fourth column matters
    im = Imatrix({name: weights}, tokens=1, chunks=1, dataset="hand-made")
    plain = llama_quantize(f16, tmp_path / "plain.gguf", "Q4_0", threads=1)
    guided = llama_quantize(f16, tmp_path / "guided.gguf", "Q4_0", threads=1, imatrix=im)

    exact = _dequantized(f16, name)
    err_plain = (_dequantized(plain, name) - exact) ** 2
    err_guided = (_dequantized(guided, name) - exact) ** 2
    important = np.zeros(64, dtype=bool)
    important[::4] = True
    # one scale per block of 32 limits how much it can favour 8 columns: measured 0.64x
    assert err_guided[:, important].mean() < 0.8 * err_plain[:, important].mean()
    assert err_guided[:, ~important].mean() > err_plain[:, ~important].mean()
    # Tensors the imatrix does not name are quantized exactly as without it.
    other = "blk.1.ffn_up.weight"
    np.testing.assert_array_equal(_dequantized(plain, other), _dequantized(guided, other))
    types = [{t.name: t.tensor_type for t in GGUFReader(str(p)).tensors} for p in (plain, guided)]
    assert types[0] == types[1]  # the same type mix: the imatrix changes values, not sizes

    fields = GGUFReader(str(guided)).fields
    assert fields["quantize.imatrix.dataset"].contents() == "hand-made"
    assert fields["quantize.imatrix.entries_count"].contents() == 1
    assert fields["quantize.imatrix.chunks_count"].contents() == 1
    assert "quantize.imatrix.dataset" not in GGUFReader(str(plain)).fields
