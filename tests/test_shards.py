"""The shard store: atomic writes, registration, zero-copy reads, kill -9 safety."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from storage.shards import TMP_PREFIX, sha256_file
from storage.tables import Shard

ROOT = Path(__file__).resolve().parent.parent


def _stage(ws, name="unit"):
    run = ws.catalog.create_run(curriculum="t", path="", spec_json="{}", spec_hash="h", command="t")
    return ws.catalog.start_stage(run.id, name)


def test_write_registers_rows_bytes_checksum_schema(workspace):
    stage = _stage(workspace)
    table = pa.table({"id": ["a", "b", "c"], "n": [1, 2, 3]})
    shard = workspace.store.write(table, stage=stage, kind="corpus")
    path = workspace.store.path(shard)
    assert path.exists() and not path.name.startswith(TMP_PREFIX)
    assert shard.rows == 3 and shard.bytes == path.stat().st_size
    assert shard.checksum == sha256_file(path)
    assert '"n": "int64"' in shard.arrow_schema
    assert workspace.catalog.shards(stage.id, "corpus")[0].id == shard.id
    assert workspace.store.verify(shard)
    path.write_bytes(path.read_bytes()[:-8] + b"corrupt!")
    assert not workspace.store.verify(shard)


def test_polars_and_datasets_views(workspace):
    stage = _stage(workspace)
    a = workspace.store.write(pl.DataFrame({"x": [1, 2]}), stage=stage, kind="k")
    b = workspace.store.write([{"x": 3}], stage=stage, kind="k")
    lazy = workspace.store.scan([a, b])
    assert isinstance(lazy, pl.LazyFrame)
    assert lazy.select(pl.col("x").sum()).collect().item() == 6
    before = pa.total_allocated_bytes()
    ds = workspace.store.dataset([a, b])
    # Memory-mapped: building the Dataset allocates no Arrow buffers for the data.
    assert pa.total_allocated_bytes() == before
    assert ds["x"] == [1, 2, 3]


def test_lineage_links(workspace):
    stage = _stage(workspace)
    parent = workspace.store.write(pa.table({"x": [1]}), stage=stage, kind="corpus")
    child = workspace.store.write(pa.table({"x": [1]}), stage=stage, kind="generated",
                                  parents=[parent])
    assert [s.id for s in workspace.catalog.shard_parents(child.id)] == [parent.id]


WRITER = """
import sys, pyarrow as pa
from flows.workspace import Workspace
ws = Workspace.open()
run = ws.catalog.create_run(curriculum="t", path="", spec_json="{}", spec_hash="h", command="t")
stage = ws.catalog.start_stage(run.id, "slow")
print(stage.id, flush=True)
big = pa.table({"text": pa.array(["x" * 200] * 3_000_000)})
ws.store.write(big, stage=stage, kind="corpus")
print("finished", flush=True)
"""


def test_writer_killed_midway_leaves_nothing_visible(workspace, stairs_home):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STAIRS_HOME": str(stairs_home)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER], stdout=subprocess.PIPE, env=env,
                            text=True)
    stage_id = int(proc.stdout.readline())
    root = workspace.store.root
    deadline = time.time() + 60
    while time.time() < deadline:  # kill once the temporary file has data in it
        tmps = list(root.rglob(f"{TMP_PREFIX}*"))
        if tmps and tmps[0].stat().st_size > 0:
            break
        time.sleep(0.005)
    else:
        proc.kill()
        pytest.fail("the writer never started writing")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    visible = [p for p in root.rglob("*.arrow") if not p.name.startswith(TMP_PREFIX)]
    assert visible == []
    assert workspace.catalog.shards(stage_id) == []
    assert workspace.store.sweep() and not list(root.rglob(f"{TMP_PREFIX}*"))


def test_catalog_is_migrated_with_alembic(workspace):
    from sqlalchemy import inspect, text

    with workspace.catalog.engine.connect() as conn:
        version = conn.execute(text("select version_num from alembic_version")).scalar()
        tables = set(inspect(conn).get_table_names())
    assert version
    assert {"run", "round", "stage", "shard", "model", "metric", "responsecache"} <= tables


def test_model_lineage(workspace):
    from storage.tables import Model

    stage = _stage(workspace)
    shard = workspace.store.write(pa.table({"x": [1]}), stage=stage, kind="train")
    base = workspace.catalog.add_model(Model(name="base", kind="base", format="hf", path="b"))
    student = workspace.catalog.add_model(
        Model(name="s", kind="student", format="hf", path="s", parent_id=base.id), [shard])
    q = workspace.catalog.add_model(
        Model(name="q", kind="quantized", format="gguf", quant="Q4_K_M", path="q",
              parent_id=student.id))
    assert [m.name for m in workspace.catalog.model_lineage(q.id)] == ["q", "s", "base"]
    assert [s.id for s in workspace.catalog.model_training_shards(student.id)] == [shard.id]
    assert isinstance(shard, Shard)
