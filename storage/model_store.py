"""Model files on shared storage, so a worker on another machine can train on or serve them.

With a models URL (STAIRS_MODELS_URL, or next to remote shards: flows/settings.models_location),
every model stairs writes under STAIRS_HOME/models (student folders, training checkpoints,
GGUF and other quantized files) is uploaded to the same relative path under that URL, and a
process that needs a model its own STAIRS_HOME lacks (a worker elsewhere, a fresh home)
downloads it into its models folder, which is then the local copy.

Object stores have no atomic folder rename, so completeness is a manifest: every file is
uploaded under a hidden temporary name and moved to its final name, then
`<path>.stairs-manifest.json` (each file's relative name, size and sha256) is written last, the
same way. No manifest, no model: a writer killed midway leaves files that no reader takes (and
a rerun of its stage uploads them again). A download checks every file against the manifest
and lands in a temporary folder renamed into place, so a half-downloaded model is never seen.
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from storage.shards import TMP_PREFIX, remote_fs, sha256_file

MANIFEST = ".stairs-manifest.json"


class ModelStoreError(OSError):
    """A model that is not (completely) on the shared store, or arrived damaged."""


@dataclass(frozen=True)
class StoredFile:
    name: str  # relative to the model's path ("" for a single-file model)
    bytes: int
    sha256: str


class RemoteModels:
    """Models under `url` (any fsspec URL that is not a local folder)."""

    def __init__(self, url: str):
        remote = remote_fs(url)
        if remote is None:
            raise ValueError(f"models URL {url!r} is a local folder, not shared storage")
        self.url = url
        self.fs, self.root = remote

    def _key(self, relative: str) -> str:
        return f"{self.root}/{relative.strip('/')}"

    # -- writing ---------------------------------------------------------------------------
    def publish(self, local: Path, relative: str) -> list[StoredFile]:
        """Upload a model file or folder to `relative`, manifest last; returns its files."""
        local = Path(local)
        files = sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]
        stored = []
        for f in files:
            name = f.relative_to(local).as_posix() if local.is_dir() else ""
            key = self._key(relative) + (f"/{name}" if name else "")
            stored.append(StoredFile(name, f.stat().st_size, sha256_file(f)))
            self._put(f, key)
        manifest = {"kind": "folder" if local.is_dir() else "file",
                    "files": [vars(s) for s in stored]}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as tmp:
            json.dump(manifest, tmp)
        try:
            self._put(Path(tmp.name), self._key(relative) + MANIFEST)
        finally:
            Path(tmp.name).unlink(missing_ok=True)
        return stored

    def _put(self, local: Path, key: str) -> None:
        folder, name = key.rsplit("/", 1)
        tmp = f"{folder}/{TMP_PREFIX}{secrets.token_hex(4)}-{name}"
        self.fs.makedirs(folder, exist_ok=True)
        self.fs.put_file(str(local), tmp)
        size = local.stat().st_size
        if self.fs.size(tmp) != size:
            self.fs.rm_file(tmp)
            raise ModelStoreError(f"upload of {self.fs.unstrip_protocol(key)} is incomplete "
                                  f"({self.fs.size(tmp)} of {size} bytes)")
        self.fs.mv(tmp, key)

    def remove(self, relative: str) -> None:
        """The manifest first: from then on no reader takes what is left."""
        key = self._key(relative)
        if self.fs.exists(key + MANIFEST):
            self.fs.rm_file(key + MANIFEST)
        if self.fs.exists(key):
            self.fs.rm(key, recursive=True)

    # -- reading ---------------------------------------------------------------------------
    def manifest(self, relative: str) -> dict | None:
        key = self._key(relative) + MANIFEST
        if not self.fs.exists(key):
            return None
        return json.loads(self.fs.cat_file(key))

    def has(self, relative: str) -> bool:
        return self.manifest(relative) is not None

    def listing(self, folder: str) -> list[str]:
        """Relative paths of the complete models directly under `folder`."""
        key = self._key(folder)
        if not self.fs.exists(key):
            return []
        names = [str(p).rsplit("/", 1)[-1] for p in self.fs.ls(key, detail=False)]
        return sorted(f"{folder.strip('/')}/{n[:-len(MANIFEST)]}" for n in names
                      if n.endswith(MANIFEST))

    def fetch(self, relative: str, local: Path) -> Path:
        """Download the model at `relative` to `local` (a file or folder that must not exist
        yet), every file checked against the manifest."""
        manifest = self.manifest(relative)
        where = self.fs.unstrip_protocol(self._key(relative))
        if manifest is None:
            raise ModelStoreError(f"{where}: no such model on the shared store (no "
                                  f"{MANIFEST}; its upload never finished?)")
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.parent / f"{TMP_PREFIX}{secrets.token_hex(4)}-{local.name}"
        try:
            for f in manifest["files"]:
                name = f["name"]
                target = tmp / name if manifest["kind"] == "folder" else tmp
                target.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self._key(relative) + (f"/{name}" if name else ""), str(target))
                if target.stat().st_size != f["bytes"] or sha256_file(target) != f["sha256"]:
                    raise ModelStoreError(f"{where}/{name}: downloaded file does not match "
                                          "its manifest (size or sha256)")
            if local.exists():  # another process fetched it meanwhile: keep theirs
                return local
            tmp.rename(local)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()
        return local


def remote_models() -> RemoteModels | None:
    """The shared model store this process is configured with, if any."""
    from flows.settings import models_location

    url = models_location()
    return RemoteModels(url) if url else None
