"""Shards on an fsspec filesystem (memory:// here; s3://, gs:// the same way): written, listed,
read, verified and swept like local ones, and never visible half-written."""

from __future__ import annotations

import secrets

import pyarrow as pa
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from flows.ingest import ingest
from flows.spec import load
from flows.workspace import Workspace
from storage.shards import ShardStore


@pytest.fixture
def memory_url(monkeypatch):
    root = f"memory://stairs-test-{secrets.token_hex(4)}/shards"
    monkeypatch.setenv("STAIRS_SHARDS_URL", root)
    yield root
    fs = MemoryFileSystem()
    fs.rm(root.removeprefix("memory://").split("/")[0], recursive=True)


@pytest.fixture
def curriculum(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: c\ncorpus:\n  format: demo\n  demo: {rows: 40}\n")
    return load(path)


def test_a_stage_writes_and_reads_shards_on_a_remote_store(memory_url, curriculum, stairs_home):
    ws = Workspace.open()
    assert ws.store.remote
    run = ws.start_run(curriculum, "ingest")
    summary = ingest(curriculum, ws, run.id)
    stage = ws.catalog.stages(run.id)[0]
    corpus = ws.shards(stage, "corpus")
    assert sum(s.rows for s in corpus) == summary.train_rows
    url = ws.store.path(corpus[0])
    bucket = memory_url.removeprefix("memory://").split("/")[0]
    assert url.startswith("memory://") and f"{bucket}/shards/{run.id}/" in url
    assert not (stairs_home / "shards" / run.id).exists()  # nothing went to the local folder

    frame = ws.store.scan(corpus).collect()
    assert frame.height == summary.train_rows and set(frame["split"]) == {"train"}
    assert ws.store.dataset(corpus).num_rows == summary.train_rows
    assert all(ws.store.verify(s) for s in ws.catalog.run_shards(run.id))


def test_remote_bytes_match_what_a_local_store_writes(memory_url, workspace, tmp_path):
    table = pa.table({"id": ["a", "b"], "n": [1, 2]})
    run = workspace.catalog.create_run(curriculum="x", path="", spec_json="{}", spec_hash="h",
                                       command="t")
    stage = workspace.catalog.start_stage(run.id, "s")
    remote = ShardStore(workspace.catalog, memory_url)
    local = ShardStore(workspace.catalog, tmp_path / "local")
    a = remote.write(table, stage=stage, kind="k")
    b = local.write(table, stage=stage, kind="k")
    assert (a.bytes, a.checksum) == (b.bytes, b.checksum)
    assert remote.table([a]).equals(local.table([b]))


class CrashBeforeRename(MemoryFileSystem):
    """A writer that dies after its upload, before the move to the final name."""

    protocol = "crashmem"

    def mv(self, *args, **kwargs):
        raise KeyboardInterrupt("killed")


def test_a_writer_killed_mid_write_leaves_nothing_visible(workspace):
    import fsspec

    fsspec.register_implementation("crashmem", CrashBeforeRename, clobber=True)
    root = f"crashmem://stairs-crash-{secrets.token_hex(4)}/shards"
    store = ShardStore(workspace.catalog, root)
    run = workspace.catalog.create_run(curriculum="x", path="", spec_json="{}", spec_hash="h",
                                       command="t")
    stage = workspace.catalog.start_stage(run.id, "s")
    with pytest.raises(KeyboardInterrupt):
        store.write(pa.table({"n": [1]}), stage=stage, kind="k")
    assert workspace.catalog.shards(stage.id) == []           # never registered
    files = store.fs.find(store.root)
    assert files and all(f.rsplit("/", 1)[-1].startswith(".tmp-") for f in files)
    assert store.sweep() == files and store.fs.find(store.root) == []


def test_file_urls_use_the_local_code_path(workspace, tmp_path):
    store = ShardStore(workspace.catalog, f"file://{tmp_path}/shards")
    assert not store.remote and store.root == tmp_path / "shards"
