"""Which local model file a teacher name means: "smollm2-135m" (the embedded GGUF), a path, or
"catalog:<model id>" (a model the catalog recorded, e.g. last round's quantized student)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from flows.embedded import EMBEDDED_NAME, embedded_gguf

CATALOG_PREFIX = "catalog:"


class ModelNotFound(FileNotFoundError):
    pass


def resolve_model(name: str, *, base_dir: Path | None = None) -> Path:
    if name == EMBEDDED_NAME:
        return embedded_gguf()
    if name.startswith(CATALOG_PREFIX):
        return _catalog_model(name[len(CATALOG_PREFIX):])
    path = Path(name).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.exists():
        raise ModelNotFound(f"teacher.model: {name!r} is not '{EMBEDDED_NAME}', "
                            f"'catalog:<id>' or an existing file/folder ({path})")
    return path.resolve()


def _catalog_model(ref: str) -> Path:
    from flows.settings import models_root
    from storage.catalog import Catalog
    from storage.tables import Model

    try:
        model_id = int(ref)
    except ValueError:
        raise ModelNotFound(f"teacher.model: 'catalog:{ref}' needs a numeric model id") from None
    model = Catalog().get(Model, model_id)
    if model is None:
        raise ModelNotFound(f"teacher.model: no model {model_id} in the catalog")
    path = Path(model.path)
    path = path if path.is_absolute() else models_root() / path
    if not path.exists():
        raise ModelNotFound(f"teacher.model: catalog model {model_id} points to missing {path}")
    return path


def file_identity(path: Path) -> str:
    """Content hash of a model file or folder: the cache key must change when the weights do,
    even if a path is reused (a student overwritten in place)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return _hash_files(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@lru_cache(maxsize=32)
def _hash_files(files: tuple) -> str:
    h = hashlib.sha256()
    for name, _size, _mtime in files:
        with open(name, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:20]
