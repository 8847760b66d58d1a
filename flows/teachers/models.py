"""Which local model file a teacher name means: "smollm2-135m" (the embedded GGUF), a path, or
"catalog:<model id>" (a model the catalog recorded, e.g. last round's quantized student)."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from flows.models import ModelRefError, resolve_model as resolve


# One resolver for every stage (flows/models.py); teachers keep their historical names.
ModelNotFound = ModelRefError


def resolve_model(name: str, *, base_dir: Path | None = None) -> Path:
    try:
        return resolve(name, base_dir=base_dir)
    except ModelRefError as e:
        raise ModelNotFound(f"teacher.model: {e}") from None


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
