"""The embedded default teacher: llama.cpp's OpenAI-compatible server on a free loopback port,
driven through the openai backend, so a GGUF teacher (the embedded SmolLM2, or last round's
quantized student) takes exactly the path a remote endpoint takes.

The server is our child process: it is stopped on close(), on errors and Ctrl-C, and (Linux)
dies with us even on kill -9 through PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx

from flows.children import die_with_parent, stop_child
from flows.llama_cpu import server_command
from flows.models import file_identity, resolve_model
from flows.teachers.base import TeacherUnreachable
from flows.teachers.openai_compat import OpenAITeacher

HEALTH_TIMEOUT_S = 180.0  # loading a model on 2 busy cores can take a while


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppTeacher(OpenAITeacher):
    backend = "llamacpp"

    def __init__(self, spec, *, base_dir: Path | None = None, n_ctx: int = 2048):
        self.gguf = resolve_model(spec.model, base_dir=base_dir)
        super().__init__(spec, base_url="http://127.0.0.1:0/v1",
                         identity=f"llamacpp:{file_identity(self.gguf)}:repeat_penalty=1.0",
                         name=f"llamacpp:{spec.model}")
        self.n_ctx = n_ctx
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None

    def _params(self, req) -> dict:
        # llama-cpp-python's server defaults to repeat_penalty 1.1, which punishes copying the
        # passage's numbers: the embedded teacher's greedy accuracy on held-out sums fell from 67%
        # (in-process, penalty 1.0) to 18% of rows right through the server (quickstart, measured).
        return {**super()._params(req), "repeat_penalty": 1.0}

    def response_format(self, schema: dict) -> dict:
        # llama-cpp-python's server takes the schema on json_object (grammar-constrained).
        return {"type": "json_object", "schema": schema}

    def start(self) -> None:
        from flows.settings import cpu_threads, stairs_home

        port, threads = free_port(), str(cpu_threads())
        self.base_url = f"http://127.0.0.1:{port}/v1"
        logs = stairs_home() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self.log_path = logs / f"llamacpp-{port}.log"
        cmd = server_command("--model", str(self.gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", str(self.n_ctx),
                             "--n_threads", threads, "--n_threads_batch", threads)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
        try:
            self._wait_healthy()
        except BaseException:
            self.close()
            raise

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + HEALTH_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise TeacherUnreachable(
                    f"llama.cpp server for {self.gguf.name} exited with code "
                    f"{self.proc.returncode}: {self._log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise TeacherUnreachable(f"llama.cpp server for {self.gguf.name} not healthy after "
                                 f"{HEALTH_TIMEOUT_S:.0f}s: {self._log_tail()}")

    def _log_tail(self, chars: int = 800) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except (OSError, AttributeError):
            return "(no log)"

    # Our child server on a port of its own: no other run shares it, so generate holds no
    # endpoint limit for it and runs its batches in this process (flows/generate/flow.py).
    endpoint_for_limit = None

    def close(self) -> None:
        proc, self.proc = self.proc, None
        stop_child(proc)
