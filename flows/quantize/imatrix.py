"""Importance matrix for llama.cpp's k-quant quantizer, computed on the student in torch.

llama.cpp's quantizer takes, for each weight matrix, one importance per input column: the mean
of the squared activation that column is multiplied with (what its `llama-imatrix` tool collects
by running the GGUF model over calibration text). With it the k-quants choose block scales that
keep the error small where the activations are large, at the same file size and type mix.

We collect the same statistic with forward pre-hooks on the transformers model over the round's
own training text (prompt + target, as the student saw it), so no second inference engine and no
intermediate file are needed; the names are llama.cpp's tensor names from gguf's name map. The
RoPE row interleaving of the exporter permutes output rows only, so input columns line up.
With a tied output head the last matmul reads token_embd, so that tensor gets the final hidden
states' statistic, as llama-imatrix records it under the same name.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Imatrix:
    values: dict[str, np.ndarray]  # gguf tensor name -> float32 mean of x² per input column
    tokens: int                    # calibration tokens seen
    chunks: int                    # sequences they came in
    dataset: str = ""              # where the text came from, written into the GGUF metadata


def compute_imatrix(model, token_ids: list[list[int]], *, max_tokens: int = 8192,
                    dataset: str = "") -> Imatrix:
    """Run `model` over the sequences one at a time (no padding enters the statistic) until
    `max_tokens` tokens are seen, recording every linear layer's input."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def add(gguf_name: str, x: torch.Tensor):
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        sums[gguf_name] = sums.get(gguf_name, 0) + (x * x).sum(dim=0)
        counts[gguf_name] = counts.get(gguf_name, 0) + x.shape[0]

    def hook_for(gguf_name: str):
        return lambda _module, args: add(gguf_name, args[0])

    handles = []
    for hf_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or hf_name == "lm_head":
            continue
        gguf_name = names.get_name(f"{hf_name}.weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(f"linear layer {hf_name!r} has no llama.cpp tensor name")
        handles.append(module.register_forward_pre_hook(hook_for(gguf_name)))
    tied = bool(getattr(config, "tie_word_embeddings", False))
    head_name = "token_embd.weight" if tied else "output.weight"
    seen = chunks = 0
    try:
        with torch.inference_mode():
            for ids in token_ids:
                if seen >= max_tokens:
                    break
                ids = ids[: max_tokens - seen]
                # The backbone only: the head's input is its output, and the 49k-row logits
                # matmul (a fifth of the forward pass here) is not needed.
                hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state
                add(head_name, hidden)
                seen += len(ids)
                chunks += 1
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError("no calibration tokens: the importance matrix needs text")
    values = {name: (sums[name] / counts[name]).to(torch.float32).numpy() for name in sums}
    return Imatrix(values, tokens=seen, chunks=chunks, dataset=dataset)


def imatrix_array(imatrix: Imatrix):
    """The NULL-terminated llama_model_imatrix_data array llama_model_quantize reads, and the
    buffers it points into (keep both alive until the call returns)."""
    import llama_cpp

    entries = [(k, np.ascontiguousarray(v, dtype=np.float32)) for k, v in imatrix.values.items()]
    array = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
    for slot, (name, values) in zip(array, entries):
        slot.name = name.encode()
        slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        slot.size = values.size
    array[len(entries)].name = None  # the terminator llama.cpp stops at
    return array, entries


def metadata_overrides(imatrix: Imatrix):
    """The quantize.imatrix.* keys llama.cpp's own quantize tool writes, as the
    llama_model_kv_override array (terminated by an empty key) the quantizer copies in."""
    import llama_cpp

    items = [("quantize.imatrix.dataset", imatrix.dataset or "stairs"),
             ("quantize.imatrix.entries_count", len(imatrix.values)),
             ("quantize.imatrix.chunks_count", imatrix.chunks)]
    array = (llama_cpp.llama_model_kv_override * (len(items) + 1))()
    for slot, (key, value) in zip(array, items):
        slot.key = key.encode()
        if isinstance(value, str):
            slot.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            slot.value.val_str = value.encode()[:127]
        else:
            slot.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            slot.value.val_i64 = int(value)
    return array  # the last slot is zeroed: key[0] == 0 ends the list
