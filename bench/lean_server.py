"""The teacher bench's endpoint: OpenAI chat completions on 127.0.0.1 at a fixed latency, for as
little CPU per request as Python allows, so that the clients it serves are what is measured.

    python bench/lean_server.py --port 8911 --latency 0.02

Why not tests/helpers/openai_server.py (uvicorn, an ASGI app with fault injection): on these
2-core machines the bench's server shares the cores with the client it measures, and at 20 ms
latency that server took 0.43 ms of CPU per request on a 2.0 GHz EPYC (2026-12-04), about as much
as the bare client loop itself, so every client's rate was set by the sum of both. A real teacher
(vLLM on a GPU) spends none of the client machine's CPU. This one is an asyncio protocol on the
httptools parser (what uvicorn uses underneath) with nothing else per request: it answers the
demo corpus's problems as the test server does (`solve`), keeps HTTP/1.1 connections alive, and
counts requests for `GET /stats` (the bench's re-send check). No faults, no streaming, no
pipelining (one request at a time per connection, as aiohttp and httpx send them).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import httptools
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers.openai_server import message_text, solve  # noqa: E402

MODELS = orjson.dumps({"object": "list", "data": [
    {"id": "fake", "object": "model", "created": 0, "owned_by": "bench"}]})


def response(status: int, payload: bytes) -> bytes:
    reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}[status]
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % (status, reason, len(payload)) + payload)


def completion(body: bytes) -> bytes:
    request = orjson.loads(body)
    messages = request["messages"]
    text = solve(message_text(messages[-1]))
    prompt_tokens = sum(len(message_text(m)) for m in messages) // 4
    completion_tokens = len(text.split())
    return orjson.dumps({
        "id": "chatcmpl-lean", "object": "chat.completion", "created": int(time.time()),
        "model": request.get("model", "fake"),
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}})


class Stats:
    received = 0


class Connection(asyncio.Protocol):
    def __init__(self, latency: float):
        self.latency = latency
        self.parser = httptools.HttpRequestParser(self)
        self.loop = asyncio.get_running_loop()
        self.transport = None
        self.url, self.body = b"", []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(response(400, b'{"error": {"message": "bad request"}}'))
            self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        path = self.url.split(b"?", 1)[0]
        if path.endswith(b"/chat/completions"):
            Stats.received += 1
            reply = response(200, completion(b"".join(self.body)))
            self.loop.call_later(self.latency, self._send, reply)
        elif path.endswith(b"/models"):
            self._send(response(200, MODELS))
        elif path.endswith(b"/stats"):
            self._send(response(200, orjson.dumps({"received": Stats.received})))
        else:
            self._send(response(404, b'{"error": {"message": "not found"}}'))

    def _send(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)


async def serve(port: int, latency: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(latency), "127.0.0.1", port,
                                      backlog=4096)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency", type=float, default=0.2)
    args = ap.parse_args()
    import uvloop

    uvloop.run(serve(args.port, args.latency))
