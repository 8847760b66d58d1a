"""Training checkpoints on the shared model store (storage/model_store.py), when one is
configured: each checkpoint is uploaded once it is saved and removed there once pruned, and a
train stage that finds no checkpoint in its own folder (a rerun on another machine, a fresh
STAIRS_HOME) first fetches the newest one from the store, so it resumes instead of starting over.
"""

from __future__ import annotations

from pathlib import Path

from flows.settings import models_root
from flows.train.trainer import checkpoints
from storage.model_store import RemoteModels, remote_models


class CheckpointMirror:
    def __init__(self, folder: Path, remote: RemoteModels):
        self.folder, self.remote = Path(folder), remote
        self.relative = self.folder.relative_to(models_root()).as_posix()

    @classmethod
    def of(cls, folder: Path) -> "CheckpointMirror | None":
        remote = remote_models()
        return cls(folder, remote) if remote is not None else None

    def restore(self) -> Path | None:
        """The newest stored checkpoint, fetched into the folder when the folder has none."""
        if checkpoints(self.folder):
            return None
        stored = self.remote.listing(self.relative)
        if not stored:
            return None
        newest = stored[-1]  # names carry the zero-padded step: sorted oldest to newest
        return self.remote.fetch(newest, models_root() / newest)

    def sync(self, _folder: Path | None = None) -> None:
        """Upload the checkpoints the store lacks; remove the ones pruned locally."""
        local = {p.name: p for p in checkpoints(self.folder)}
        stored = {s.rsplit("/", 1)[-1]: s for s in self.remote.listing(self.relative)}
        for name, path in sorted(local.items()):
            if name not in stored:
                self.remote.publish(path, f"{self.relative}/{name}")
        for name, relative in stored.items():
            if name not in local:
                self.remote.remove(relative)

    def clear(self) -> None:
        for relative in self.remote.listing(self.relative):
            self.remote.remove(relative)
