"""The row process (flows/generate/rowproc.py): the generate stage against the loopback fake
server, with the teacher's answers turned into rows, cached and written by a forked child."""

from __future__ import annotations

import os

import psutil
import pytest

from flows.generate import generate_flow
from flows.params import StageParams
from flows.teachers.cache import ResponseCacheStore
from tests.helpers.gen_helpers import generated, write_curriculum
from tests.helpers.openai_server import FakeOpenAI, Faults


@pytest.fixture
def row_process(monkeypatch):
    monkeypatch.setenv("STAIRS_ROW_PROCESS_MIN", "1")  # every run with a request to send


def test_rows_are_built_and_written_by_a_row_process(tmp_path, workspace, stairs_home,
                                                      row_process):
    faults = Faults(rate_limit=0.1, retry_after=0.02, server_error=0.05, seed=5)
    with FakeOpenAI(latency=0.002, faults=faults) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=120,
                                teacher={"concurrency": 16, "samples": 2},
                                generate={"batch_rows": 50})
        result = generate_flow.fn(StageParams(curriculum=str(path)))
        sent = sum(srv.received.values())
        # Run again: every answer is in the response cache, so nothing is sent.
        generate_flow.fn(StageParams(curriculum=str(path)))
        assert sum(srv.received.values()) == sent
    (batch,) = result.batches
    assert batch["pid"] == os.getpid()
    assert batch["rows_pid"] not in (None, os.getpid())
    assert not psutil.pid_exists(batch["rows_pid"])  # waited for, not left a zombie
    assert result.complete and result.retries > 0
    df = generated(workspace, result.run_id)
    assert df.height == result.rows_written == result.requests == 2 * result.source_rows
    assert df["id"].n_unique() == df.height
    assert (df["answer"] == df["gold_answer"]).all()
    # Its shards are registered like any other: several (batch_rows 50), counted by the parent.
    assert result.shards_written == len(workspace.catalog.shards(
        workspace.latest_stage("generate", run_id=result.run_id).id, "generated")) >= 5
    # Tokens as the rows record them; the row process's CPU is counted in the stage's.
    assert result.prompt_tokens == df["prompt_tokens"].sum() > 0
    assert result.cpu_s > 0
    # Its answer journal was folded into the catalog and removed.
    assert not list((stairs_home / "catalog.db.answers").glob("*.jsonl"))
    cached = ResponseCacheStore(workspace.catalog).present(list(df["request_hash"]))
    assert len(cached) == df.height


def test_a_failing_row_process_fails_the_stage_and_names_it(tmp_path, workspace, row_process,
                                                            monkeypatch):
    from storage.shards import ShardStore

    parent, write = os.getpid(), ShardStore.write

    def full_disk_in_the_child(self, *args, **kwargs):
        if os.getpid() != parent:
            raise OSError(28, "No space left on device")
        return write(self, *args, **kwargs)

    # Inherited by the fork: the row process's shard writes fail, as on a full disk.
    monkeypatch.setattr(ShardStore, "write", full_disk_in_the_child)
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=40, generate={"batch_rows": 10})
        with pytest.raises(Exception, match="row process failed: OSError.*No space left"):
            generate_flow.fn(StageParams(curriculum=str(path)))
    run = workspace.catalog.runs()[0]
    assert run.status == "failed"
