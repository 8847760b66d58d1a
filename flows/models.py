"""Model references shared by every stage: resolve "catalog:<id>", the embedded model's name, or a
path to a file/folder on disk; and the base student (the embedded SmolLM2 as a transformers folder).

    resolve_model("catalog:12", catalog)   -> path of catalog model 12 (file or folder)
    resolve_model("smollm2-135m")          -> the embedded GGUF
    resolve_model("/x/student.gguf")       -> that path, if it exists
"""

from __future__ import annotations

import os
from pathlib import Path

from flows.embedded import EMBEDDED_NAME, embedded_gguf

CATALOG_PREFIX = "catalog:"


class ModelRefError(ValueError, FileNotFoundError):
    """A model reference that does not name an existing model; the message says which and why."""


def model_path(path: str) -> Path:
    """A catalog Model.path: absolute, or relative to the models root."""
    from flows.settings import models_root

    p = Path(path).expanduser()
    return p if p.is_absolute() else models_root() / p


def resolve_model(ref: str, catalog=None, *, base_dir: Path | None = None) -> Path:
    """The one place a model reference becomes a path (teachers, students, quantize, serve).
    A relative path is taken against base_dir (a curriculum's folder) when given."""
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
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.exists():
        raise ModelRefError(f"{ref!r}: not a catalog:<id>, not {EMBEDDED_NAME!r}, and no such "
                            f"file or folder ({path})")
    return path.resolve()


def cache_root() -> Path:
    """Conversions that depend only on a model file's content (a GGUF as safetensors), keyed by
    its hash: STAIRS_HOME/cache, or STAIRS_CACHE to share them between homes (the tests do)."""
    from flows.settings import stairs_home

    root = Path(os.environ.get("STAIRS_CACHE") or stairs_home() / "cache").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def base_hf_folder() -> Path:
    """The embedded SmolLM2-135M-Instruct as a transformers safetensors folder (float32)."""
    from flows.student.base import hf_folder, resolve

    return hf_folder(resolve(EMBEDDED_NAME))


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
