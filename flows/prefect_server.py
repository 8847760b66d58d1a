"""The temporary Prefect API server of one stairs command, run as stairs' own child.

With no PREFECT_API_URL, Prefect starts a temporary server by itself, in stairs' process group
and outliving it: a Ctrl-C in a terminal (SIGINT to the whole foreground group) killed that
server first, and the flow engine then retried the dead API for minutes before exiting 1; a
kill -9 or SIGTERM of stairs left it running for good (~250 MB each). The CLI starts the same
server (Prefect's own app, launched the way Prefect launches it) itself, with two differences:

- it runs in its own session, so a terminal's signals reach stairs only: stairs stops its
  work, records it through the server that is still up, then stops the server at exit;
- it dies with stairs however stairs ends (flows/children.py: PR_SET_PDEATHSIG, so kill -9
  too), and atexit stops it on every exit Python sees.

A user's own server (PREFECT_API_URL) is used as it is.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from flows.children import die_with_parent, stop_child


class PrefectServerError(RuntimeError):
    """The temporary server did not come up; the message says where its log is."""


_process: subprocess.Popen | None = None
_log: Path | None = None
_port: int | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start() -> str:
    """The API URL this process uses, starting the temporary server when the user set none
    (or waiting for the one launch() started). Call from the main thread, before any flow runs
    (the parent-death signal follows the thread that starts the child)."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    if _process is None:
        launch()
    url = f"http://127.0.0.1:{_port}/api"
    _wait_healthy(url)
    os.environ["PREFECT_API_URL"] = url
    os.environ.setdefault("PREFECT_UI_URL", "")  # no UI is served: no "View at" links to it
    _point_prefect_at(url)
    return url


def launch() -> None:
    """Start the temporary server without waiting for it, so that it comes up while the command
    imports its stage and checks the curriculum (each took 6-10 s on a 2-core machine, as long
    as the server's own start); start() then waits for it. Nothing when the user set
    PREFECT_API_URL or the server is already started. Main thread only (see start())."""
    global _process, _log, _port
    if os.environ.get("PREFECT_API_URL") or _process is not None:
        return
    from flows.settings import stairs_home

    port = _free_port()
    site = Path(importlib.util.find_spec("prefect").origin).parent.parent
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(site), "--factory",
           "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "error", "--lifespan", "on"]
    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
           "PREFECT__SERVER_FINAL": "1"}
    logs = stairs_home() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _log = logs / f"prefect-server-{port}.log"
    with open(_log, "wb") as log:
        _process = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=die_with_parent)
    _port = port
    atexit.register(stop)


def _wait_healthy(url: str) -> None:
    timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 120))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _process.poll() is not None:
            raise PrefectServerError(f"the temporary Prefect server exited with code "
                                     f"{_process.returncode}; log: {_log}")
        try:
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    stop()
    raise PrefectServerError(f"the temporary Prefect server did not answer within "
                             f"{timeout:.0f} s; log: {_log}")


def _point_prefect_at(url: str) -> None:
    # Prefect read its settings when it was imported (the curriculum checks may import it):
    # refresh them, so every thread, including Prefect's log and event workers, uses `url`.
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def stop() -> None:
    """Stop the temporary server (at exit; safe to call twice)."""
    global _process
    proc, _process = _process, None
    stop_child(proc)
