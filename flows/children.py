"""Child processes that must not outlive stairs (the llama.cpp teacher server, Prefect's API
server): on Linux the kernel sends them SIGTERM the moment stairs ends, however it ends,
kill -9 included (PR_SET_PDEATHSIG). Elsewhere their owners still stop them on every exit
Python sees."""

from __future__ import annotations

import ctypes
import signal
import subprocess

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A Popen preexec_fn. The signal follows the *thread* that starts the child, so start
    children that must live as long as stairs from the main thread."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the owner's close()/atexit still stops the child on a normal exit


def stop_child(proc: subprocess.Popen | None, grace_s: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL if it is still there after `grace_s`; its exit code (None: no
    child). A server that ignores SIGTERM while it loads a model must not hang our exit."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)
    return proc.returncode
