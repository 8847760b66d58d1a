"""Serve a GGUF model through llama.cpp's OpenAI-compatible server on loopback.

    stairs serve catalog:7            # a quantized student from the catalog
    stairs serve smollm2-135m --port 8080
    stairs serve /path/student-Q4_K_M.gguf

`serving(...)` is the same thing as a context manager for code and tests: it starts
`python -m llama_cpp.server` as a child process, waits until /v1/models answers, and on exit
terminates it (SIGTERM, then SIGKILL after a grace period) and waits for it, so no server outlives
its caller. The base URL it yields is what the `openai` teacher backend (or `llamacpp` with
"catalog:<id>") talks to.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx

from flows.children import stop_child

LOOPBACK = "127.0.0.1"


class ServeError(RuntimeError):
    """The server could not start; the message includes the tail of its log."""


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    host: str
    port: int
    model_path: Path
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def stop(self, grace_s: float = 10.0) -> int:
        return stop_child(self.process, grace_s)


def _log_tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def start_server(model: str | Path, *, host: str = LOOPBACK, port: int | None = None,
                 n_ctx: int = 2048, threads: int | None = None, catalog=None,
                 startup_timeout_s: float = 120.0, log_path: Path | None = None) -> Server:
    from flows.models import resolve_model

    path = resolve_model(str(model), catalog)
    if path.is_dir() or path.suffix != ".gguf":
        raise ServeError(f"{model}: llama.cpp serves GGUF files, and {path} is not one")
    port = port or free_port(host)
    if log_path is None:
        from flows.settings import stairs_home

        log_dir = stairs_home() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"serve-{port}.log"
    from flows.llama_cpu import server_command

    cmd = server_command("--model", str(path), "--host", host, "--port", str(port),
                         "--n_ctx", str(n_ctx), "--model_alias", path.stem)
    from flows.settings import cpu_threads

    threads = threads or cpu_threads()
    cmd += ["--n_threads", str(threads), "--n_threads_batch", str(threads)]
    log = open(log_path, "wb")
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.close()
    server = Server(process, host, port, path, log_path)
    deadline = time.monotonic() + startup_timeout_s
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServeError(f"llama.cpp server exited with {process.returncode} while "
                                 f"starting ({log_path}):\n{_log_tail(log_path)}")
            try:
                if httpx.get(f"{server.base_url}/models", timeout=2).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
    except BaseException:  # Ctrl-C/SIGTERM while starting must not orphan the child
        server.stop()
        raise
    server.stop()
    raise ServeError(f"llama.cpp server did not answer within {startup_timeout_s:.0f} s "
                     f"({log_path}):\n{_log_tail(log_path)}")


@contextmanager
def serving(model: str | Path, **kwargs) -> Iterator[Server]:
    server = start_server(model, **kwargs)
    try:
        yield server
    finally:
        server.stop()
