"""Signals (issue 19, findings 3 and 4), through the real `stairs generate` command and its real
temporary Prefect server: Ctrl-C in a terminal stops within seconds, keeps every answered row
and exits 130; SIGTERM stops the same way (143); kill -9 or SIGTERM of stairs leaves no Prefect
server behind. Integration: the temporary server takes a while to start on a busy machine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.gen_helpers import write_curriculum
from tests.helpers.openai_server import FakeOpenAI

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def prefect_servers(home: Path) -> list[psutil.Process]:
    """Prefect API servers started for this STAIRS_HOME (other jobs on the machine have theirs)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if "prefect.server.api.server:create_app" in " ".join(proc.info["cmdline"] or []) \
                    and proc.environ().get("STAIRS_HOME") == str(home):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def gone_within(home: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while prefect_servers(home):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.fixture
def stairs_generate(tmp_path, stairs_home):
    """`stairs generate` as a terminal runs it: its own process group (the foreground job,
    which a terminal's Ctrl-C signals as a whole), with no Prefect server configured. Yields
    once it is answering; whatever it leaves behind is cleaned up afterwards."""
    procs = []

    def start(srv, rows):
        path = write_curriculum(tmp_path, srv.base_url, rows=rows, teacher={"concurrency": 2},
                                generate={"batch_rows": 1000})
        env = {**os.environ, "STAIRS_HOME": str(stairs_home), "PYTHONPATH": str(ROOT)}
        for var in ("PREFECT_API_URL", "PREFECT_HOME"):
            env.pop(var, None)
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "generate", str(path)],
                                env=env, cwd=ROOT, start_new_session=True, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        deadline = time.monotonic() + 300  # the temporary server starts first
        while sum(srv.answered.values()) < 20:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for server in prefect_servers(stairs_home):  # what an old stairs left running
        server.kill()


def test_ctrl_c_in_a_terminal_stops_within_seconds_keeps_every_row_exits_130(
        stairs_generate, workspace, stairs_home):
    with FakeOpenAI(latency=0.05) as srv:
        proc = stairs_generate(srv, rows=600)
        answered = sum(srv.answered.values())
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - started
    assert proc.returncode == 130, err[-3000:]
    assert took < 15
    assert "stopped (SIGINT): every answered row is kept" in err and "Traceback" not in err
    assert gone_within(stairs_home, 15)
    run = workspace.catalog.runs()[0]
    stage = [s for s in workspace.catalog.stages(run.id) if s.name == "generate"][-1]
    assert run.status == "stopped" and stage.status == "stopped"
    # batch_rows is 1000: these rows reached a shard because the interrupt flushed them.
    kept = workspace.store.scan(workspace.shards(stage, "generated")).collect()
    assert kept.height >= answered - 2 and kept["id"].n_unique() == kept.height


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_killing_stairs_leaves_no_prefect_server_behind(stairs_generate, workspace, stairs_home,
                                                        sig):
    with FakeOpenAI(latency=0.05) as srv:
        proc = stairs_generate(srv, rows=600)
        assert len(prefect_servers(stairs_home)) == 1
        os.kill(proc.pid, sig)  # stairs only, as `kill` or a service manager does
        proc.communicate(timeout=60)
    assert gone_within(stairs_home, 15)
    if sig == signal.SIGTERM:  # stopped like Ctrl-C: answered rows written, run resumable
        assert proc.returncode == 143
        run = workspace.catalog.runs()[0]
        assert run.status == "stopped"
