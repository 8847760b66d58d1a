"""Model references shared by every stage: resolve "catalog:<id>", the embedded model's name, or a
path to a file/folder on disk; and the base student (the embedded SmolLM2 as a transformers folder).

    resolve_model("catalog:12", catalog)   -> path of catalog model 12 (file or folder)
    resolve_model("smollm2-135m")          -> the embedded GGUF
    resolve_model("/x/student.gguf")       -> that path, if it exists
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from flows.embedded import EMBEDDED_NAME, embedded_gguf

CATALOG_PREFIX = "catalog:"
BASE_FOLDER_NAME = "smollm2-135m-instruct-hf"


class ModelRefError(ValueError):
    """A model reference that does not name an existing model; the message says which and why."""


def model_path(path: str) -> Path:
    """A catalog Model.path: absolute, or relative to the models root."""
    from flows.settings import models_root

    p = Path(path).expanduser()
    return p if p.is_absolute() else models_root() / p


def resolve_model(ref: str, catalog=None) -> Path:
    ref = str(ref).strip()
    if ref.startswith(CATALOG_PREFIX):
        from storage.tables import Model

        raw = ref[len(CATALOG_PREFIX):]
        if not raw.isdigit():
            raise ModelRefError(f"{ref!r}: expected catalog:<model id>, e.g. catalog:3")
        if catalog is None:
            from storage.catalog import Catalog

            catalog = Catalog()
        model = catalog.get(Model, int(raw))
        if model is None:
            raise ModelRefError(f"{ref!r}: no model {raw} in the catalog (see `stairs show RUN`)")
        path = model_path(model.path)
        if not path.exists():
            raise ModelRefError(f"{ref!r}: the catalog says {path}, which does not exist")
        return path
    if ref == EMBEDDED_NAME:
        return embedded_gguf()
    path = Path(ref).expanduser()
    if not path.exists():
        raise ModelRefError(f"{ref!r}: not a catalog:<id>, not {EMBEDDED_NAME!r}, and no such file")
    return path.resolve()


def cache_root() -> Path:
    """Conversions that do not depend on a run (the base model as safetensors) are cached outside
    STAIRS_HOME so that every fresh home and every test reuses them."""
    root = Path(os.environ.get("STAIRS_CACHE", Path.home() / ".cache" / "stairs")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def base_hf_folder() -> Path:
    """The embedded SmolLM2-135M-Instruct as a transformers safetensors folder (float32).

    transformers dequantizes the Q4_1 GGUF on load (about 30-60 s here); saving the result once
    makes every later load a 1 s safetensors read. Written to a temporary folder and renamed, so a
    killed conversion never leaves a half folder behind."""
    folder = cache_root() / BASE_FOLDER_NAME
    if (folder / "model.safetensors").exists():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf()
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    # The GGUF loader marks the model as gguf-quantized, which forbids saving; the weights are
    # plain float32 by now, so move them into an unmarked model of the same config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def register_base_model(catalog) -> "object":
    """The base student as a catalog Model (kind base, format hf), created once per catalog."""
    from storage.tables import Model

    folder = base_hf_folder()
    for m in catalog.models():
        if m.kind == "base" and m.path == str(folder):
            return m
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    return catalog.add_model(Model(name=EMBEDDED_NAME, kind="base", format="hf", quant="F32",
                                   path=str(folder), bytes=size))
