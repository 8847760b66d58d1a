"""A real HTTP server on 127.0.0.1 that speaks OpenAI chat completions, for tests and benches.

It answers deterministically (it solves the demo corpus's "how many ... in total" problems from
the passage, or replies with a scripted text), waits a fixed latency per request, and injects
faults on demand: 429 with Retry-After, 500, slow responses, dropped connections, malformed
bodies. It counts every request it receives by content, so tests can prove what was (re)sent.

A bare ASGI app on uvicorn (both already stairs dependencies through llama-cpp-python's server
extra): no framework routing needed for two endpoints, and it keeps server overhead low for the
throughput bench.

    python tests/fakes/openai_server.py --port 8911 --latency 0.2     # standalone (bench)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import uvicorn

FACT = re.compile(r"(\b[A-Z][a-z]+) has ([^.]*)\.")
SUM_Q = re.compile(r"How many (\w+) does ([A-Z][a-z]+) have in total\?")


def solve(text: str) -> str:
    """A correct step-by-step answer for a demo 'sum' problem, else an honest non-answer."""
    q = SUM_Q.search(text)
    facts = {name: rest for name, rest in FACT.findall(text)}
    if q and q.group(2) in facts:
        numbers = [int(n) for n in re.findall(r"\d+", facts[q.group(2)])]
        steps = " + ".join(map(str, numbers))
        return (f"{q.group(2)} has {facts[q.group(2)]}. Adding them: {steps} = {sum(numbers)}.\n"
                f"Answer: {sum(numbers)}")
    return "I could not find the facts needed.\nAnswer: unknown"


@dataclass
class Faults:
    """Probabilities per request (drawn from a seeded RNG, so runs repeat)."""

    rate_limit: float = 0.0  # 429 with Retry-After
    retry_after: float = 0.05
    server_error: float = 0.0  # 500
    disconnect: float = 0.0  # connection dropped mid-response
    malformed: float = 0.0  # 200 with a body that is not JSON
    slow: float = 0.0  # sleeps `slow_s` before answering (beyond a client timeout)
    slow_s: float = 3.0
    seed: int = 0


@dataclass
class FakeOpenAI:
    latency: float = 0.0
    faults: Faults = field(default_factory=Faults)
    # substring of the user message -> (reply text, finish_reason)
    script: dict[str, tuple[str, str]] = field(default_factory=dict)
    port: int = 0
    received: Counter = field(default_factory=Counter)  # content key -> times received
    answered: Counter = field(default_factory=Counter)  # content key -> 200s sent
    statuses: Counter = field(default_factory=Counter)
    auth_headers: list = field(default_factory=list)

    def __post_init__(self):
        self._rng = random.Random(self.faults.seed)
        self._server = self._thread = None

    # -- HTTP --------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        if path.endswith("/stats"):  # for benches running the server in another process
            return await self._json(send, 200, {"received": sum(self.received.values()),
                                                "distinct": len(self.received)})
        if path.endswith("/models"):
            return await self._json(send, 200, {"object": "list", "data": [
                {"id": "fake", "object": "model", "created": 0, "owned_by": "tests"}]})
        if not path.endswith("/chat/completions"):
            return await self._json(send, 404, {"error": {"message": "not found"}})
        headers = dict(scope["headers"])
        self.auth_headers.append(headers.get(b"authorization", b"").decode())
        request = json.loads(body)
        key = content_key(request["messages"], request.get("seed"))
        self.received[key] += 1
        await asyncio.sleep(self.latency)
        f, roll = self.faults, self._rng.random()
        for name, p in (("rate_limit", f.rate_limit), ("server_error", f.server_error),
                        ("disconnect", f.disconnect), ("malformed", f.malformed),
                        ("slow", f.slow)):
            if roll < p:
                return await getattr(self, "_" + name)(send, request, key)
            roll -= p
        return await self._answer(send, request, key)

    async def _json(self, send, status: int, doc, extra=()):
        self.statuses[status] += 1
        payload = json.dumps(doc).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()), *extra]})
        await send({"type": "http.response.body", "body": payload})

    async def _answer(self, send, request, key):
        user = request["messages"][-1]["content"]
        text, finish = solve(user), "stop"
        for needle, (scripted, reason) in self.script.items():
            if needle in user:
                text, finish = scripted, reason
        self.answered[key] += 1
        prompt_tokens = sum(len(m["content"]) for m in request["messages"]) // 4
        choice = {"index": 0, "finish_reason": finish,
                  "message": {"role": "assistant", "content": text}}
        if request.get("logprobs"):
            k = request.get("top_logprobs") or 1
            choice["logprobs"] = {"content": [
                {"token": w, "logprob": -0.1, "bytes": None,
                 "top_logprobs": [{"token": w, "logprob": -0.1, "bytes": None}] * k}
                for w in text.split()[:8]]}
        await self._json(send, 200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model", "fake"), "choices": [choice],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                      "total_tokens": prompt_tokens + len(text.split())}})

    async def _rate_limit(self, send, request, key):
        await self._json(send, 429, {"error": {"message": "slow down", "type": "rate_limit"}},
                         [(b"retry-after", str(self.faults.retry_after).encode())])

    async def _server_error(self, send, request, key):
        await self._json(send, 500, {"error": {"message": "boom", "type": "server_error"}})

    async def _disconnect(self, send, request, key):
        self.statuses["disconnect"] += 1
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"5000")]})
        await send({"type": "http.response.body", "body": b'{"id": "chatc', "more_body": True})
        raise ConnectionResetError("fault injection: drop the connection mid-body")

    async def _malformed(self, send, request, key):
        self.statuses["malformed"] += 1
        payload = b'{"id": "x", "choices": [ this is not json'
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})

    async def _slow(self, send, request, key):
        self.statuses["slow"] += 1
        await asyncio.sleep(self.faults.slow_s)
        await self._answer(send, request, key)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeOpenAI":
        self.port = self.port or free_port()
        config = uvicorn.Config(self, host="127.0.0.1", port=self.port, log_level="critical",
                                lifespan="on", backlog=2048, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def content_key(messages, seed) -> str:
    return hashlib.sha256(json.dumps([messages, seed], sort_keys=True).encode()).hexdigest()[:16]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency", type=float, default=0.2)
    args = ap.parse_args()
    server = FakeOpenAI(latency=args.latency, port=args.port)
    uvicorn.run(server, host="127.0.0.1", port=args.port, log_level="critical", backlog=4096)
