"""Processes that open one new catalog at the same moment (two `stairs generate` on a fresh
STAIRS_HOME, Dask workers on a shared catalog) all get a working schema: the Alembic upgrade is
serialized, so none fails on a table another one is creating ("table alembic_version already
exists", seen in the cluster test)."""

from __future__ import annotations

import multiprocessing

import pytest

from tests.helpers.postgres import postgres_server

OPENERS = 6


def _open(url: str, go, out) -> None:
    from storage.catalog import Catalog

    go.wait(30)
    try:
        catalog = Catalog(url)
        run = catalog.create_run(curriculum="race", path="race.yaml", spec_json="{}",
                                 spec_hash="h", command="test")
        out.put(("ok", run.id))
    except Exception as e:  # noqa: BLE001 - the parent reports what each process saw
        out.put(("error", f"{type(e).__name__}: {e}"[:300]))


def open_all_at_once(url: str) -> list[tuple[str, str]]:
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(url, go, out)) for _ in range(OPENERS)]
    for p in procs:
        p.start()
    go.set()  # all released together, after each has imported its modules
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    return results


def test_processes_opening_a_new_sqlite_catalog_at_once_all_succeed(tmp_path):
    results = open_all_at_once(f"sqlite:///{tmp_path / 'catalog.db'}")
    assert [r for r in results if r[0] != "ok"] == []
    from storage.catalog import Catalog

    assert len(Catalog(f"sqlite:///{tmp_path / 'catalog.db'}").runs()) == OPENERS


@pytest.mark.integration
def test_processes_opening_a_new_postgres_catalog_at_once_all_succeed():
    with postgres_server() as url:
        results = open_all_at_once(url)
        assert [r for r in results if r[0] != "ok"] == []
