"""Student bases: resolve a model reference to a loaded causal LM and its tokenizer.

A reference is "smollm2-135m" (the embedded GGUF), a Hugging Face model folder, a GGUF file, or
"catalog:<id>". transformers dequantizes a GGUF into a float model, which takes ~30 s on 2 cores
(tokenizer ~15 s of it), so the converted model is cached once as safetensors under
STAIRS_HOME/cache/hf/<name>-<file hash> (flows.models.cache_root); later loads take a second.

A smaller student can be cut from a larger base by keeping a subset of its decoder layers
(DistilBERT/Minitron-style initialization); the cut is saved with its parent recorded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from flows.embedded import EMBEDDED_NAME
from flows.models import ModelRefError  # one error type for every model reference

STAIRS_META = "stairs.json"  # written next to every model we save: lineage and how it was made




@dataclass(frozen=True)
class ResolvedModel:
    ref: str          # what the user wrote
    kind: str         # hf | gguf
    path: Path        # folder (hf) or file (gguf)
    catalog_id: int | None = None


def resolve(ref: str, catalog=None) -> ResolvedModel:
    """Turn a reference into a concrete folder or file, without loading anything."""
    from flows.models import CATALOG_PREFIX, resolve_model

    path = resolve_model(ref, catalog)  # raises ModelRefError naming what was tried
    catalog_id = int(ref.split(":", 1)[1]) if ref.startswith(CATALOG_PREFIX) else None
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(ref, "gguf", path, catalog_id=catalog_id)
    if path.is_dir() and (path / "config.json").exists():
        return ResolvedModel(ref, "hf", path, catalog_id=catalog_id)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel(ref, "gguf", ggufs[0].resolve())
    raise ModelRefError(
        f"{ref!r}: not '{EMBEDDED_NAME}', 'catalog:<id>', a GGUF file or a Hugging Face model "
        "folder (one with config.json)")


def _file_hash(path: Path, limit: int = 8 << 20) -> str:
    """Hash of size + the first and last 8 MiB: enough to tell GGUF files apart, and fast."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(limit))
        f.seek(max(0, path.stat().st_size - limit))
        h.update(f.read(limit))
    return h.hexdigest()[:12]


def hf_folder(resolved: ResolvedModel) -> Path:
    """An HF folder for the model: itself, or the cached safetensors conversion of a GGUF."""
    if resolved.kind == "hf":
        return resolved.path
    from flows.models import cache_root

    cache = cache_root() / "hf" / f"{resolved.path.stem}-{_file_hash(resolved.path)}"
    if (cache / "config.json").exists() and (cache / STAIRS_META).exists():
        return cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = resolved.path.parent, resolved.path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The weights are already dequantized to float; only the GGUF marker blocks saving them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer, model.is_quantized = None, False
    tmp = cache.with_name(cache.name + ".tmp")
    model.save_pretrained(tmp)  # safetensors by default
    tokenizer.save_pretrained(tmp)
    (tmp / STAIRS_META).write_text(json.dumps({"converted_from": str(resolved.path)}))
    if cache.exists():
        import shutil

        shutil.rmtree(cache)
    tmp.rename(cache)  # the cache is visible only once complete
    return cache


def load(ref: str, *, catalog=None, device: str = "cpu", dtype=None):
    """(model, tokenizer, folder) for any reference; GGUF files go through the safetensors cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = hf_folder(resolve(ref, catalog))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or "float32").to(device)
    if tokenizer.pad_token is None:
        # Padding is always masked out of attention and loss, so any token will do.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, folder


def keep_layers(model, layers: list[int]):
    """Cut a student from a larger base: keep these decoder layers (in order), drop the rest."""
    import torch

    blocks = model.model.layers
    n = len(blocks)
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ValueError(f"student.keep_layers: {bad} out of range for a {n}-layer base")
    kept = [blocks[i % n] for i in layers]
    model.model.layers = torch.nn.ModuleList(kept)
    for new_index, block in enumerate(kept):
        # Attention modules carry their layer index for the KV cache; renumber them.
        if hasattr(block, "self_attn") and hasattr(block.self_attn, "layer_idx"):
            block.self_attn.layer_idx = new_index
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i % n] for i in layers]
    return model


def read_meta(folder: Path) -> dict:
    p = Path(folder) / STAIRS_META
    return json.loads(p.read_text()) if p.exists() else {}
