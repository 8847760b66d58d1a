"""The catalog on a real PostgreSQL (Debian's `postgresql` package), started on a loopback port in
a temporary folder for this module: STAIRS_CATALOG_URL=postgresql+psycopg://... must run the
Alembic migrations and every verb the stages use. Skips cleanly without initdb/pg_ctl."""

from __future__ import annotations

import pytest

from tests.helpers.postgres import postgres_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


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
