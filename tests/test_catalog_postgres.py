"""The catalog on a real PostgreSQL (Debian's `postgresql` package), started on a loopback port in
a temporary folder for this module: STAIRS_CATALOG_URL=postgresql+psycopg://... must run the
Alembic migrations and every verb the stages use. Skips cleanly without initdb/pg_ctl."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps the server binaries off PATH, under the major version's folder.
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_postgres_user() -> list[str] | None:
    """initdb refuses to run as root: run the server as Debian's `postgres` user then."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--"] if runuser else None


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    prefix = _as_postgres_user()
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    if prefix is None:
        pytest.skip("running as root without a 'postgres' user to run the server as")
    pytest.importorskip("psycopg", reason="the postgres extra: pip install 'stairs[postgres]'")
    # Not under pytest's tmp: that folder is private to root and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="stairs-pg-"))
    data = folder / "data"
    if prefix:
        shutil.chown(folder, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(prefix + [initdb, "-D", str(data), "-U", "stairs", "--auth=trust",
                             "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    started = subprocess.run(prefix + [pg_ctl, "-D", str(data), "-o", options, "-w", "-t", "60",
                                       "-l", str(folder / "server.log"), "start"],
                             capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stdout + started.stderr + (
            (folder / "server.log").read_text() if (folder / "server.log").exists() else "")
        yield f"postgresql+psycopg://stairs@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def test_stages_run_on_a_postgres_catalog(postgres_url, monkeypatch, tmp_path):
    from sqlalchemy import inspect, text

    from flows.ingest import ingest
    from flows.runinfo import run_details
    from flows.spec import load
    from flows.workspace import Workspace
    from storage.tables import Model

    monkeypatch.setenv("STAIRS_CATALOG_URL", postgres_url)
    cur = tmp_path / "pg.yaml"
    cur.write_text("name: pg\ncorpus:\n  format: demo\n  demo: {rows: 30}\n")
    spec = load(cur)
    ws = Workspace.open()
    assert ws.catalog.engine.dialect.name == "postgresql"
    assert {"run", "stage", "shard", "model", "metric"} <= set(
        inspect(ws.catalog.engine).get_table_names())

    run = ws.start_run(spec, "ingest")
    summary = ingest(spec, ws, run.id)
    ws.catalog.finish_run(run.id)
    assert summary.train_rows + summary.eval_rows == 30

    # A second run reuses the finished stage through the Postgres catalog.
    again = ws.start_run(spec, "ingest")
    reused = ingest(spec, ws, again.id)
    assert reused.run_id == again.id
    assert reused.model_dump(exclude={"run_id"}) == summary.model_dump(exclude={"run_id"})
    details = run_details(ws, again.id)
    assert details["stages"][0]["reused_from"] is not None
    assert sum(s["rows"] for s in details["stages"][0]["shards"]) == 30

    shards = ws.catalog.run_shards(run.id)
    base = ws.catalog.add_model(Model(run_id=run.id, name="base", kind="base", format="gguf",
                                      path="base.gguf"))
    child = ws.catalog.add_model(Model(run_id=run.id, name="s", kind="student", format="hf",
                                       path="s", parent_id=base.id), trained_on=shards[:1])
    assert [m.id for m in ws.catalog.model_lineage(child.id)] == [child.id, base.id]
    assert [s.id for s in ws.catalog.model_training_shards(child.id)] == [shards[0].id]
    ws.catalog.log_metric("accuracy", 0.5, run_id=run.id, model_id=child.id, split="eval")
    assert ws.catalog.metrics(model_id=child.id)[0].value == 0.5

    with ws.catalog.engine.connect() as c:
        assert c.execute(text("select count(*) from run")).scalar() == 2


def test_run_locks_and_abandoned_runs_on_postgres(postgres_url, monkeypatch, tmp_path):
    """The run lock is plain SQL (insert, compare-and-delete, update): the same on PostgreSQL,
    where processes on several machines share one catalog."""
    import time

    import pytest

    from flows.spec import Curriculum
    from flows.workspace import Workspace
    from storage import locks
    from storage.tables import RunLock

    monkeypatch.setenv("STAIRS_CATALOG_URL", postgres_url)
    ws = Workspace.open()
    spec = Curriculum.model_validate({"name": "pg-lock", "corpus": {"format": "demo"}})
    run = ws.start_run(spec, "generate")
    now = time.time()
    ws.catalog.add(RunLock(run_id=run.id, token="x", host="gpu-box-7", pid=99, process_started=1.0,
                           command="stairs run c.yaml", acquired=now, heartbeat=now))
    with pytest.raises(locks.RunLocked, match="in use by pid 99 on gpu-box-7"):
        with ws.run_scope(None, lambda: run.id):
            pass
    assert Workspace.open().catalog.get_run(run.id).status == "running"  # its holder is alive
    with ws.catalog.engine.begin() as conn:  # gpu-box-7 went silent for longer than the lease
        conn.execute(RunLock.__table__.update().values(heartbeat=now - locks.LEASE_S - 5))
    again = Workspace.open()  # the next command finds it abandoned...
    assert again.catalog.get_run(run.id).status == "failed"
    with again.run_scope(None, lambda: run.id):  # ...and may take it over to resume it
        assert again.catalog.locks.holder(run.id).host != "gpu-box-7"
    assert again.catalog.get_run(run.id).status == "completed"
    assert again.catalog.locks.holder(run.id) is None
