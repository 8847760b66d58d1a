"""stop_child: the one way stairs stops the servers it started (llama.cpp, Prefect, `stairs
serve`)."""

import signal
import subprocess
import sys

from flows.children import stop_child


def _child(code: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"  # its handlers are set before we signal it
    return proc


def test_stop_child_terminates_a_child_that_listens():
    proc = _child("import time; print('ready', flush=True); time.sleep(60)")
    assert stop_child(proc) == -signal.SIGTERM


def test_stop_child_kills_a_child_that_ignores_sigterm():
    proc = _child("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                  "print('ready', flush=True); time.sleep(60)")
    assert stop_child(proc, grace_s=0.5) == -signal.SIGKILL


def test_stop_child_leaves_an_exited_child_and_no_child_alone():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    assert stop_child(proc) == 3
    assert stop_child(None) is None
