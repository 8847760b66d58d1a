"""absmax int8 and group-wise int4: exact values on hand-made tensors, and whole-model round trips."""

from __future__ import annotations

import json

import pytest
import torch

from flows.quantize import absmax
from tests.helpers.tiny_llama import tiny_llama, tiny_tokenizer


def test_int8_per_tensor_exact_values():
    x = torch.tensor([[1.0, -2.5], [0.5, 4.0]])
    q, amax = absmax.absmax_int8(x, "tensor")
    # 127 / max|X| = 127 / 4 = 31.75: 31.75 -> 32, -79.375 -> -79, 15.875 -> 16, 127 -> 127
    assert q.dtype == torch.int8
    assert q.tolist() == [[32, -79], [16, 127]]
    assert amax.item() == 4.0
    back = absmax.dequantize_int8(q, amax)
    assert torch.equal(back, torch.tensor([[32.0, -79.0], [16.0, 127.0]]) * (4.0 / 127.0))


def test_int8_per_channel_has_one_scale_per_output_row():
    x = torch.tensor([[1.0, -4.0], [0.1, -0.3]])
    q, amax = absmax.absmax_int8(x, "channel")
    assert amax.flatten().tolist() == pytest.approx([4.0, 0.3])
    # row 0: 127/4 = 31.75 -> [32, -127]; row 1: 127/0.3 = 423.33 -> [42, -127]
    assert q.tolist() == [[32, -127], [42, -127]]


def test_int8_round_trip_is_exact_on_the_grid():
    # max|X| = 127 makes the grid the integers: quantize then dequantize gives X back exactly.
    x = torch.tensor([[127.0, -3.0, 0.0, 64.0], [-127.0, 1.0, 2.0, -5.0]])
    for granularity in ("tensor", "channel"):
        q, amax = absmax.absmax_int8(x, granularity)
        assert torch.equal(q.to(torch.float32), x)
        assert torch.equal(absmax.dequantize_int8(q, amax), x)


def test_int8_zero_tensor_stays_zero():
    q, amax = absmax.absmax_int8(torch.zeros(3, 4), "channel")
    assert not q.any()
    assert torch.equal(absmax.dequantize_int8(q, amax), torch.zeros(3, 4))


def test_int4_symmetric_group_scales_and_codes():
    x = torch.tensor([[1.0, -2.0, 3.0, -7.0, 0.5, 0.3, -0.5, 0.0]])
    codes, scale, zero = absmax.int4_groups(x, group_size=4, symmetric=True)
    assert zero is None
    # group 0: max|X| 7 -> scale 1; group 1: max|X| 0.5 -> scale 0.5/7
    assert scale[0].tolist() == pytest.approx([1.0, 0.5 / 7])
    # levels round(X / scale) in -7..7, stored +8: [1,-2,3,-7] -> [9,6,11,1]; [7, 4.2 -> 4, -7, 0]
    assert codes.tolist() == [[9, 6, 11, 1, 15, 12, 1, 8]]
    back = absmax.dequantize_int4(codes, scale, None, 4)
    assert back[0, :4].tolist() == [1.0, -2.0, 3.0, -7.0]
    assert back[0, 4:].tolist() == pytest.approx([0.5, 4 * 0.5 / 7, -0.5, 0.0])


def test_int4_asymmetric_uses_min_max_and_zero_point():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 16) * 0.5 - 1.0  # -1.0 .. 6.5
    codes, scale, zero = absmax.int4_groups(x, group_size=16, symmetric=False)
    assert scale[0].tolist() == pytest.approx([0.5])  # (6.5 - -1) / 15
    assert zero.tolist() == [[2]]  # round(1.0 / 0.5)
    assert codes.tolist() == [list(range(16))]
    assert torch.allclose(absmax.dequantize_int4(codes, scale, zero, 16), x)


def test_int4_rejects_a_group_size_that_does_not_divide_rows():
    with pytest.raises(ValueError, match="group size 5"):
        absmax.int4_groups(torch.ones(2, 8), group_size=5)


def test_nibble_packing_round_trips():
    codes = torch.randint(0, 16, (3, 7), dtype=torch.uint8)
    packed = absmax.pack_nibbles(codes)
    assert packed.numel() == 11  # 21 codes, two per byte
    assert torch.equal(absmax.unpack_nibbles(packed, (3, 7)), codes)


@pytest.mark.parametrize("scheme,max_bits", [
    (absmax.Scheme("int8", "tensor"), 8.02),
    (absmax.Scheme("int8", "channel"), 8.6),
    (absmax.Scheme("int4", group_size=32), 4.51),
    (absmax.Scheme("int4", group_size=16, symmetric=False), 5.51),
])
def test_model_round_trip_through_the_file(tmp_path, scheme, max_bits):
    tok = tiny_tokenizer()
    model = tiny_llama(tok, scale=0.05)
    report = absmax.quantize_model(model, scheme, tmp_path / "q", tok)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert [r["layer"] for r in report] == [f"{n}.weight" for n in linears]
    assert json.loads((tmp_path / "q" / absmax.REPORT_FILE).read_text()) == report
    assert all(r["bits_per_weight"] <= max_bits for r in report)

    loaded = absmax.load_quantized(tmp_path / "q")
    # The loaded weights are exactly the dequantized values, the tied pair still tied.
    for name, w in model.state_dict().items():
        if name in {r["layer"] for r in report}:
            stored, w_hat = absmax.quantize_weight(w, scheme)
            assert torch.equal(loaded.state_dict()[name], w_hat), name
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([tok("Vorla has 3 red lanterns")["input_ids"]])
    with torch.no_grad():
        a, b = model(ids).logits, loaded(ids).logits
    worst = max(r["rel_error"] for r in report)
    assert 0 < worst < (0.02 if scheme.kind == "int8" else 0.2)
    assert (a - b).abs().max() < (0.05 if scheme.kind == "int8" else 0.5)


def test_int8_file_really_holds_int8(tmp_path):
    from safetensors import safe_open

    tok = tiny_tokenizer()
    absmax.quantize_model(tiny_llama(tok), absmax.Scheme("int8", "channel"), tmp_path, tok)
    with safe_open(str(tmp_path / absmax.QUANT_FILE), "pt") as f:
        q = f.get_tensor("model.layers.0.mlp.down_proj.weight.q")
        scale = f.get_tensor("model.layers.0.mlp.down_proj.weight.scale")
    assert q.dtype == torch.int8 and tuple(q.shape) == (64, 128)
    assert tuple(scale.shape) == (64, 1)


def test_loader_refuses_a_file_without_scheme(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / absmax.QUANT_FILE))
    with pytest.raises(ValueError, match="not a stairs quantized file"):
        absmax.load_quantized(tmp_path)


def test_model_error_names_the_layer(tmp_path):
    tok = tiny_tokenizer()
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.weight: group size 48"):
        absmax.quantize_model(tiny_llama(tok), absmax.Scheme("int4", group_size=48), tmp_path, tok)
    assert not (tmp_path / absmax.QUANT_FILE).exists()  # nothing half-written
