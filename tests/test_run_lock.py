"""One process at a time works in a run (storage/locks.py), and a run whose process died is
marked failed by the next command (issue 19, findings 2 and 9)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from flows.cli import app
from storage import locks
from storage.locks import RunLocked
from storage.tables import RunLock
from tests.helpers.gen_helpers import generated, write_curriculum
from tests.helpers.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
GENERATE = ("import sys; from flows.generate import generate_flow; "
            "from flows.params import StageParams; "
            "generate_flow.fn(StageParams(curriculum=sys.argv[1]))")


def spawn(path, stairs_home, **kw) -> subprocess.Popen:
    env = {**os.environ, "STAIRS_HOME": str(stairs_home), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", GENERATE, str(path)], env=env, cwd=ROOT,
                            **kw)


def wait_for(condition, proc, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, "the first process ended too early"
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_second_generate_of_the_same_run_is_refused_naming_the_first(tmp_path, workspace,
                                                                       stairs_home):
    with FakeOpenAI(latency=0.01) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=40, teacher={"concurrency": 2})
        first = spawn(path, stairs_home)
        wait_for(lambda: sum(srv.answered.values()) >= 10, first)
        srv.latency = 3.0  # the first run is busy while the second one starts
        second = spawn(path, stairs_home, stderr=subprocess.PIPE, text=True)
        _, err = second.communicate(timeout=120)
        srv.latency = 0.01
        assert first.wait(timeout=120) == 0
    assert second.returncode != 0
    assert "RunLocked: run " in err and f"is in use by pid {first.pid} on " in err
    run = workspace.catalog.runs()[0]
    assert len(workspace.catalog.runs()) == 1 and run.status == "completed"
    assert [s.status for s in workspace.catalog.stages(run.id) if s.name == "generate"] == [
        "completed"]  # the refused process marked nothing failed
    df = generated(workspace, run.id)
    assert df.height == 40 and df["id"].n_unique() == 40
    assert sum(srv.received.values()) == 40  # nothing paid twice


def lock_row(run_id: str, **over) -> RunLock:
    now = time.time()
    fields = {"run_id": run_id, "token": "t0", "host": "other-host", "pid": 4242,
              "process_started": 1.0, "command": "stairs generate c.yaml", "acquired": now,
              "heartbeat": now, **over}
    return RunLock(**fields)


def test_a_live_holder_elsewhere_refuses_a_stale_one_is_taken_over(workspace):
    catalog = workspace.catalog
    catalog.add(lock_row("r1"))
    with pytest.raises(RunLocked, match=r"run r1 is in use by pid 4242 on other-host "
                                        r"\(stairs generate c.yaml; since"):
        catalog.locks.acquire("r1")
    # Not heard from for longer than the lease: its holder is gone, whatever host it was on.
    with catalog.engine.begin() as conn:
        conn.execute(RunLock.__table__.update().values(heartbeat=time.time() - locks.LEASE_S - 1))
    catalog.locks.acquire("r1")
    mine = catalog.locks.holder("r1")
    assert mine.pid == os.getpid() and mine.host == socket.gethostname()
    catalog.locks.release("r1")
    assert catalog.locks.holder("r1") is None


def test_a_dead_holder_on_this_host_is_taken_over_at_once(workspace):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(gone.pid).create_time()
    gone.wait()
    workspace.catalog.add(lock_row("r2", host=socket.gethostname(), pid=gone.pid,
                                   process_started=started))
    workspace.catalog.locks.acquire("r2")  # fresh heartbeat, but no such process any more
    assert workspace.catalog.locks.holder("r2").pid == os.getpid()
    workspace.catalog.locks.release("r2")


def test_a_live_holder_whose_start_time_reads_later_after_a_clock_step_is_still_alive(workspace):
    """psutil reads a process's start as the kernel's boot time now + ticks since boot, and the
    boot time moves when the clock is stepped: a build VM read a live run's start 3.0 s later
    than it had recorded, and `stairs show` marked the live run failed."""
    catalog = workspace.catalog
    run = catalog.create_run(curriculum="c", path="c.yaml", spec_json="{}", spec_hash="h",
                             command="run")
    me = psutil.Process().create_time()
    catalog.add(lock_row(run.id, host=socket.gethostname(), pid=os.getpid(),
                         process_started=me - 3.0, acquired=time.time() - 3600))
    assert workspace.mark_abandoned() == []  # what the next command's Workspace.open() does
    assert catalog.runs()[0].status == "running"
    with pytest.raises(RunLocked, match=f"is in use by pid {os.getpid()} "):
        catalog.locks.acquire(run.id)


def test_a_pid_taken_by_a_process_started_after_the_last_heartbeat_is_not_the_holder(workspace):
    reused = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = psutil.Process(reused.pid).create_time()
        # The holder last beat 45 s before this process started (still inside the 60 s lease),
        # then died; its pid now belongs to `reused`.
        row = lock_row("r5", host=socket.gethostname(), pid=reused.pid,
                       process_started=started - 100, heartbeat=started - 45)
        assert not locks.alive(row, now=started)
        assert locks.alive(lock_row("r5", host=socket.gethostname(), pid=reused.pid,
                                    process_started=started - 100, heartbeat=started + 1),
                           now=started + 2)
    finally:
        reused.kill()
        reused.wait()


def test_the_lock_is_reentrant_in_its_process_and_renewed_while_held(workspace, monkeypatch):
    monkeypatch.setattr(locks, "HEARTBEAT_S", 0.05)
    held = workspace.catalog.locks
    held.acquire("r3")
    first = held.holder("r3").heartbeat
    held.acquire("r3")  # a stage flow inside a staircase enters the run it already holds
    time.sleep(0.5)
    assert held.holder("r3").heartbeat > first
    held.release("r3")
    assert held.holder("r3") is not None
    held.release("r3")
    assert held.holder("r3") is None


def test_a_run_whose_process_was_killed_is_marked_failed_by_the_next_command(
        tmp_path, workspace, stairs_home):
    with FakeOpenAI(latency=0.02) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=60)
        proc = spawn(path, stairs_home)
        wait_for(lambda: sum(srv.answered.values()) >= 10, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    runs = json.loads(CliRunner().invoke(app, ["runs", "--json"]).stdout)
    assert [r["status"] for r in runs] == ["failed"]
    assert runs[0]["error"].startswith("ended without recording why: its process was killed")
    stages = {s.name: s.status for s in workspace.catalog.stages(runs[0]["id"])}
    assert stages == {"ingest": "completed", "generate": "failed"}
