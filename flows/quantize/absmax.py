"""Absmax int8 and group-wise int4 quantization of a transformers model's linear layers.

int8 is exactly the textbook absmax rule, per tensor or per output channel (row):
    X_q = round(127 / max|X| · X)          X ≈ max|X| / 127 · X_q
int4 is round-to-nearest per group of `group_size` consecutive input weights in each row:
symmetric (scale = max|X| / 7, levels -7..7) or asymmetric (scale = (max - min) / 15, a zero point,
levels 0..15). Rounding is torch.round (half to even), the same on every platform.

A quantized model is saved as a folder: config.json + tokenizer files + `quantized.safetensors`
holding, per quantized weight W, `W.q` (int8, or two 4-bit codes packed per uint8), `W.scale` and
for asymmetric int4 `W.zero`; every other tensor as it was. `load_quantized` rebuilds the model with
dequantized weights (a dequantizing loader: evaluation runs in float, the file holds the bits).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file

QUANT_FILE = "quantized.safetensors"
REPORT_FILE = "reconstruction.json"
Granularity = Literal["tensor", "channel"]


# -- int8 absmax ------------------------------------------------------------------------------
def absmax_int8(x: torch.Tensor, granularity: Granularity = "tensor"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(X_q int8, max|X| float32): per tensor a scalar max, per channel one max per row."""
    x = x.detach().to(torch.float32)
    if granularity == "tensor":
        amax = x.abs().max()
    elif granularity == "channel":
        if x.dim() < 2:
            raise ValueError(f"per-channel absmax needs a 2-D weight, got shape {tuple(x.shape)}")
        amax = x.abs().amax(dim=tuple(range(1, x.dim())), keepdim=True)
    else:
        raise ValueError(f"granularity must be 'tensor' or 'channel', not {granularity!r}")
    # An all-zero tensor/row has max 0: any scale reproduces it, and 1 avoids dividing by zero.
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    q = torch.round(127.0 / safe * x).clamp_(-127, 127).to(torch.int8)
    return q, amax


def dequantize_int8(q: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    return amax.to(torch.float32) / 127.0 * q.to(torch.float32)


# -- int4 group-wise --------------------------------------------------------------------------
def int4_groups(x: torch.Tensor, group_size: int = 32, symmetric: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Codes (uint8 in 0..15, one per weight, shape of x), scales [rows, groups] and, asymmetric
    only, zero points [rows, groups]. Symmetric codes store level+8 so -7..7 fits in 0..15."""
    if x.dim() != 2:
        raise ValueError(f"int4 quantization needs a 2-D weight, got shape {tuple(x.shape)}")
    rows, cols = x.shape
    if group_size < 1 or cols % group_size:
        raise ValueError(f"group size {group_size} does not divide the row length {cols}")
    g = x.detach().to(torch.float32).reshape(rows, cols // group_size, group_size)
    if symmetric:
        amax = g.abs().amax(dim=-1, keepdim=True)
        scale = amax / 7.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        levels = torch.round(g / safe).clamp_(-7, 7)
        codes = (levels + 8).to(torch.uint8)
        zero = None
    else:
        lo, hi = g.amin(dim=-1, keepdim=True), g.amax(dim=-1, keepdim=True)
        scale = (hi - lo) / 15.0
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero = torch.round(-lo / safe).clamp_(0, 15)
        codes = torch.round(g / safe + zero).clamp_(0, 15).to(torch.uint8)
        zero = zero.squeeze(-1).to(torch.uint8)
    return codes.reshape(rows, cols), scale.squeeze(-1), zero


def dequantize_int4(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None,
                    group_size: int) -> torch.Tensor:
    rows, cols = codes.shape
    c = codes.to(torch.float32).reshape(rows, cols // group_size, group_size)
    s = scale.to(torch.float32).unsqueeze(-1)
    if zero is None:
        w = (c - 8) * s
    else:
        w = (c - zero.to(torch.float32).unsqueeze(-1)) * s
    return w.reshape(rows, cols)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte (even index in the low nibble): the file really holds 4 bits."""
    flat = codes.reshape(-1)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return (flat[0::2] | (flat[1::2] << 4)).to(torch.uint8)


def unpack_nibbles(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    out = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(-1)
    return out[: math.prod(shape)].reshape(shape)


# -- whole models -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Scheme:
    """What to do to each linear weight: int8 absmax (tensor/channel) or int4 groups."""

    kind: Literal["int8", "int4"]
    granularity: Granularity = "channel"
    group_size: int = 32
    symmetric: bool = True

    @property
    def label(self) -> str:
        if self.kind == "int8":
            return f"int8-absmax-{self.granularity}"
        return f"int4-g{self.group_size}-{'sym' if self.symmetric else 'asym'}"

    @property
    def format(self) -> str:
        return "int8-absmax" if self.kind == "int8" else "int4"


def quantizable_weights(model, include_embeddings: bool = True) -> dict[str, torch.Tensor]:
    """Weights of the model's nn.Linear layers, by state-dict name. A tied lm_head shares its
    tensor with the input embedding, so it is quantized once (both use the dequantized values);
    with include_embeddings=False such a shared tensor stays in float."""
    shared = model.get_input_embeddings().weight
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            if module.weight is shared and not include_embeddings:
                continue
            out[f"{name}.weight"] = module.weight
    return out


def _error_row(name: str, w: torch.Tensor, w_hat: torch.Tensor, stored_bytes: int) -> dict:
    w, w_hat = w.detach().to(torch.float32), w_hat.to(torch.float32)
    err = w - w_hat
    rel = (err.norm() / w.norm()).item() if w.norm() > 0 else 0.0
    sqnr = 10 * math.log10((w.pow(2).mean() / err.pow(2).mean()).item()) if err.any() else math.inf
    return {"layer": name, "shape": list(w.shape), "params": w.numel(),
            "rel_error": rel, "max_abs_error": err.abs().max().item(), "sqnr_db": sqnr,
            "bits_per_weight": 8 * stored_bytes / w.numel()}


def quantize_weight(w: torch.Tensor, scheme: Scheme) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Stored tensors (suffix -> tensor) and the dequantized weight for one linear weight."""
    if scheme.kind == "int8":
        q, amax = absmax_int8(w, scheme.granularity)
        return {"q": q, "scale": amax.to(torch.float32)}, dequantize_int8(q, amax)
    codes, scale, zero = int4_groups(w, scheme.group_size, scheme.symmetric)
    # fp16 scales, as llama.cpp's Q4_0 stores them: at group 32 that is 0.5 bit per weight.
    scale16 = scale.to(torch.float16)
    stored = {"q": pack_nibbles(codes), "scale": scale16}
    if zero is not None:
        stored["zero"] = pack_nibbles(zero)
    return stored, dequantize_int4(codes, scale16, zero, scheme.group_size)


def quantize_model(model, scheme: Scheme, out_dir: Path, tokenizer=None, *,
                   include_embeddings: bool = True) -> list[dict]:
    """Quantize the model's linear weights into `out_dir`; returns the per-layer error report
    (also written to reconstruction.json). The model itself is left unchanged."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = quantizable_weights(model, include_embeddings)
    target_ids = {id(t) for t in targets.values()}
    tensors: dict[str, torch.Tensor] = {}
    report = []
    for name, w in targets.items():
        try:
            stored, w_hat = quantize_weight(w, scheme)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        for suffix, t in stored.items():
            tensors[f"{name}.{suffix}"] = t.contiguous()
        report.append(_error_row(name, w, w_hat, sum(t.numel() * t.element_size()
                                                     for t in stored.values())))
    seen = set(target_ids)
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:  # quantized, or a tied copy of something already stored
            continue
        seen.add(id(t))
        tensors[name] = t.detach().contiguous()
    meta = {"format": scheme.format, "scheme": json.dumps(scheme.__dict__),
            "quantized": json.dumps(sorted(targets))}
    model.config.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=1))
    # The weights file last and by rename: a folder with quantized.safetensors is complete.
    tmp = out_dir / f".tmp-{QUANT_FILE}"
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, out_dir / QUANT_FILE)
    return report


def read_scheme(folder: Path) -> Scheme:
    from safetensors import safe_open

    with safe_open(str(Path(folder) / QUANT_FILE), "pt") as f:
        meta = f.metadata() or {}
    if "scheme" not in meta:
        raise ValueError(f"{folder / QUANT_FILE}: not a stairs quantized file (no 'scheme' metadata)")
    return Scheme(**json.loads(meta["scheme"]))


def dequantized_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    folder = Path(folder)
    scheme = read_scheme(folder)
    raw = load_file(str(folder / QUANT_FILE))
    state = {k: v for k, v in raw.items() if not k.endswith((".q", ".scale", ".zero"))}
    for key in [k for k in raw if k.endswith(".q")]:
        name = key[:-2]
        if scheme.kind == "int8":
            state[name] = dequantize_int8(raw[key], raw[f"{name}.scale"])
            continue
        scale = raw[f"{name}.scale"]
        rows, groups = scale.shape
        shape = (rows, groups * scheme.group_size)
        codes = unpack_nibbles(raw[key], shape)
        zero = unpack_nibbles(raw[f"{name}.zero"], (rows, groups)) if f"{name}.zero" in raw else None
        state[name] = dequantize_int4(codes, scale, zero, scheme.group_size)
    return state


def load_quantized(folder: Path):
    """A transformers model whose linear weights are the dequantized values of the file."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    read_scheme(folder)  # a clear error for a file we did not write, before anything else
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = dequantized_state_dict(folder)
    if config.tie_word_embeddings:
        # The file holds a tied pair once (under whichever name was quantized); give both names.
        embed = next(n for n, p in model.named_parameters()
                     if p is model.get_input_embeddings().weight)
        head = "lm_head.weight"
        if head in state or embed in state:
            state.setdefault(embed, state.get(head))
            state.setdefault(head, state[embed])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{folder / QUANT_FILE} does not fit {config.model_type}: {e}") from None
    model.tie_weights()
    return model.eval()
