"""A real HTTP server on 127.0.0.1 that speaks OpenAI chat completions, for tests and benches.

It answers deterministically (it solves the demo corpus's "how many ... in total" problems from
the passage, or replies with a scripted text), waits a fixed latency per request, and injects
faults on demand: 429 with Retry-After, 500, slow responses, dropped connections, malformed
bodies, odd reply shapes (SHAPES: content as parts or a number, a lone surrogate, token counts
as strings), requests that always disconnect. It counts every request it receives by content,
so tests can prove what was (re)sent.

A bare ASGI app on uvicorn (both already stairs dependencies through llama-cpp-python's server
extra): no framework routing needed for two endpoints, and it keeps server overhead low for the
throughput bench.

    python tests/helpers/openai_server.py --port 8911 --latency 0.2     # standalone (bench)
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
    # messages of a request -> reply text, or None for the default answer (checked after
    # `script`): a teacher that answers by what it was asked (a disentangle request, a judge...)
    responder: object = None
    # substring of the user message -> a reply shape from SHAPES (odd but seen bodies)
    shapes: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()  # substrings of user messages whose requests always disconnect
    port: int = 0
    received: Counter = field(default_factory=Counter)  # content key -> times received
    answered: Counter = field(default_factory=Counter)  # content key -> 200s sent
    statuses: Counter = field(default_factory=Counter)
    auth_headers: list = field(default_factory=list)
    formats: list = field(default_factory=list)  # response_format of each chat request
    # With a tokenizer, logprobs come per token of that tokenizer (a teacher that shares the
    # student's vocabulary); without one, per whitespace-separated word.
    tokenizer: object = None
    scored: list = field(default_factory=list)  # /v1/completions prompts, as token ids
    hold_batches: bool = False  # batches stay "in_progress" (a job that takes hours)
    reject_auth: bool = False  # answer chat requests with `reject_status` (a revoked key...)
    reject_status: int = 401  # 401 bad key, 403 forbidden, 404 no such model
    files: dict = field(default_factory=dict)  # Batch API files: id -> bytes
    batches: dict = field(default_factory=dict)
    killed: bool = False  # kill(): requests in flight are dropped, the port is closed
    in_flight: int = 0  # chat requests being answered now
    max_in_flight: int = 0  # the most at once since start: what a shared limit must bound

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
        headers = dict(scope["headers"])
        if self.reject_auth and not path.endswith("/models"):  # /models stays up: reachable
            return await self._json(send, self.reject_status, {"error": {"message": {
                401: "invalid api key", 403: "forbidden", 404: "no such model"}[
                    self.reject_status]}})
        if "/files" in path or "/batches" in path:
            return await self._batch_api(send, scope["method"], path, headers, body)
        if path.endswith("/v1/completions") and self.tokenizer is not None:
            return await self._json(send, 200, self.echo_scores(json.loads(body)))
        if not path.endswith("/chat/completions"):
            return await self._json(send, 404, {"error": {"message": "not found"}})
        self.auth_headers.append(headers.get(b"authorization", b"").decode())
        request = json.loads(body)
        self.formats.append(request.get("response_format"))
        key = content_key(request["messages"], request.get("seed"))
        self.received[key] += 1
        self.in_flight += 1  # one event loop: no lock needed
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._chat(send, request, key)
        finally:
            self.in_flight -= 1

    async def _chat(self, send, request, key):
        await asyncio.sleep(self.latency)
        if self.killed or any(needle in message_text(request["messages"][-1])
                              for needle in self.drop):
            return await self._disconnect(send, request, key)
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
        self.answered[key] += 1
        await self._json(send, 200, self.completion(request))

    def completion(self, request: dict) -> dict:
        user = message_text(request["messages"][-1])
        text, finish = solve(user), "stop"
        for needle, (scripted, reason) in self.script.items():
            if needle in user:
                text, finish = scripted, reason
        if self.responder is not None:
            answer = self.responder([{**m, "content": message_text(m)}
                                     for m in request["messages"]])
            if answer is not None:
                text, finish = answer, "stop"
        prompt_tokens = sum(len(message_text(m)) for m in request["messages"]) // 4
        choice = {"index": 0, "finish_reason": finish,
                  "message": {"role": "assistant", "content": text}}
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(text.split()),
                 "total_tokens": prompt_tokens + len(text.split())}
        for needle, shape in self.shapes.items():
            if needle in user:
                SHAPES[shape](choice["message"], usage)
        if request.get("logprobs"):
            choice["logprobs"] = {"content": self.logprobs(text, request.get("top_logprobs") or 0)}
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": request.get("model", "fake"), "choices": [choice], "usage": usage}

    def logprobs(self, text: str, k: int) -> list[dict]:
        """The OpenAI layout: per token {token, logprob, bytes, top_logprobs: k of {token,
        logprob, bytes}}, the chosen token the most likely, k distinct alternatives."""
        if self.tokenizer is None:
            tokens = text.split()
            others = [[f"{t}~{j}" for j in range(1, k)] for t in tokens]
        else:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            tokens = [self.tokenizer.decode([i]) for i in ids]
            clean = self._clean_ids()
            others = []
            for i in ids:  # the next k-1 tokens of the vocabulary that are not this one
                at = next((n for n, c in enumerate(clean) if c > i), 0)
                picked = [clean[(at + j) % len(clean)] for j in range(k)]
                others.append([self.tokenizer.decode([c]) for c in picked if c != i][:k - 1])
        lps = [-0.05 - 0.6 * j for j in range(k)]
        return [{"token": t, "logprob": lps[0], "bytes": None,
                 "top_logprobs": [{"token": a, "logprob": lp, "bytes": None}
                                  for a, lp in zip([t, *alts], lps)]}
                for t, alts in zip(tokens, others)]

    def echo_scores(self, request: dict) -> dict:
        """/v1/completions with echo and logprobs, laid out as llama.cpp's server answers: per
        prompt token (the first has none) its text, logprob and a dict of alternatives (the top
        k plus the token itself), then the one generated token. The fake teacher's taste: after
        token i it prefers the next clean vocabulary id after i."""
        tok, k = self.tokenizer, request.get("logprobs") or 1
        ids = tok(request["prompt"], add_special_tokens=False)["input_ids"]
        self.scored.append(ids)
        clean = self._clean_ids()

        def preferred(prev: int) -> int:
            return next((c for c in clean if c > prev), clean[0])

        generated = preferred(ids[-1])
        tokens, token_lps, tops = [tok.decode([ids[0]])], [None], [None]
        for prev, actual in zip(ids, ids[1:] + [generated]):
            best = preferred(prev)
            alts = {tok.decode([best]): -0.1}
            for j, c in enumerate(c for c in clean if c > best):
                if len(alts) >= k:
                    break
                alts.setdefault(tok.decode([c]), -3.0 - j)
            lp = alts.get(tok.decode([actual]), -8.0)
            alts[tok.decode([actual])] = lp
            tokens.append(tok.decode([actual]))
            token_lps.append(lp)
            tops.append(alts)
        return {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                "model": request.get("model", "fake"), "choices": [{
                    "index": 0, "text": "".join(tokens), "finish_reason": "length",
                    "logprobs": {"tokens": tokens, "token_logprobs": token_lps,
                                 "top_logprobs": tops, "text_offset": [0] * len(tokens)}}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": 1,
                          "total_tokens": len(ids) + 1}}

    def _clean_ids(self) -> list[int]:
        """Ids whose text encodes back to exactly themselves (no partial UTF-8, no specials)."""
        if not hasattr(self, "_clean"):
            tok = self.tokenizer
            self._clean = [i for i in range(len(tok)) if i not in tok.all_special_ids
                           and tok(tok.decode([i]), add_special_tokens=False)["input_ids"] == [i]]
        return self._clean

    # -- Batch API: files in, a batch that completes when first polled, files out --------------
    async def _batch_api(self, send, method: str, path: str, headers: dict, body: bytes):
        if method == "POST" and path.endswith("/files"):
            content = _multipart_file(headers.get(b"content-type", b"").decode(), body)
            file_id = f"file-{len(self.files)}"
            self.files[file_id] = content
            return await self._json(send, 200, _file(file_id, len(content), "batch"))
        if method == "POST" and path.endswith("/batches"):
            request = json.loads(body)
            batch_id = f"batch-{len(self.batches)}"
            self.batches[batch_id] = {"input": request["input_file_id"], "polls": 0}
            return await self._json(send, 200, self._batch_doc(batch_id))
        if method == "GET" and "/batches/" in path:
            batch_id = path.rsplit("/", 1)[1]
            batch = self.batches[batch_id]
            batch["polls"] += 1
            if batch["polls"] >= 2 and "output" not in batch and not self.hold_batches:  # "in_progress" on the 1st poll
                out = []
                for line in self.files[batch["input"]].decode().splitlines():
                    item = json.loads(line)
                    body_ = item["body"]
                    key = content_key(body_["messages"], body_.get("seed"))
                    self.received[key] += 1
                    self.answered[key] += 1
                    out.append(json.dumps({"id": "r", "custom_id": item["custom_id"],
                                           "response": {"status_code": 200,
                                                        "body": self.completion(body_)},
                                           "error": None}))
                file_id = f"file-{len(self.files)}"
                self.files[file_id] = ("\n".join(out) + "\n").encode()
                batch["output"] = file_id
            return await self._json(send, 200, self._batch_doc(batch_id))
        if method == "GET" and path.endswith("/content"):
            file_id = path.split("/")[-2]
            payload = self.files[file_id]
            self.statuses[200] += 1
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"application/octet-stream"),
                (b"content-length", str(len(payload)).encode())]})
            return await send({"type": "http.response.body", "body": payload})
        return await self._json(send, 404, {"error": {"message": f"no route {method} {path}"}})

    def _batch_doc(self, batch_id: str) -> dict:
        b = self.batches[batch_id]
        return {"id": batch_id, "object": "batch", "endpoint": "/v1/chat/completions",
                "input_file_id": b["input"], "completion_window": "24h", "created_at": 0,
                "status": "completed" if "output" in b else "in_progress",
                "output_file_id": b.get("output"), "error_file_id": None}

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

    def kill(self) -> None:
        """Die mid-run like a crashed replica: what is in flight gets a dropped connection
        instead of an answer, and the port closes (new connections are refused)."""
        self.killed = True
        if self._server is not None:
            self._server.should_exit = self._server.force_exit = True
            self._thread.join(timeout=10)
            self._server = None

    def revive(self) -> "FakeOpenAI":
        """Come back on the same port (a restarted replica); counters carry on."""
        self.killed = False
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _parts(message, usage):  # the API's list-of-parts form of the same text
    text = message["content"]
    message["content"] = [{"type": "text", "text": text[:10]}, {"type": "text", "text": text[10:]}]


def _number(message, usage):
    message["content"] = 42


def _lone_surrogate(message, usage):  # JSON "\ud800": valid JSON, not valid Unicode text
    message["content"] += "\ud800"


def _string_tokens(message, usage):
    usage["prompt_tokens"] = str(usage["prompt_tokens"])
    usage["completion_tokens"] = str(usage["completion_tokens"])


def _word_tokens(message, usage):
    usage["completion_tokens"] = "many"


SHAPES = {"content_parts": _parts, "content_number": _number, "lone_surrogate": _lone_surrogate,
          "string_tokens": _string_tokens, "word_tokens": _word_tokens}


def _multipart_file(content_type: str, body: bytes) -> bytes:
    """The uploaded file of a multipart/form-data body (the stdlib email parser reads it)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "file":
            return part.get_payload(decode=True)
    raise ValueError("no file part in the upload")


def _file(file_id: str, size: int, purpose: str) -> dict:
    return {"id": file_id, "object": "file", "bytes": size, "created_at": 0,
            "filename": "upload.jsonl", "purpose": purpose, "status": "processed"}


def message_text(message: dict) -> str:
    """A message's text: the API takes `content` as a string or as a list of parts
    ({"type": "text", "text": ...}), and clients differ (data-designer sends parts)."""
    content = message.get("content") or ""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content


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
    # The bench's server must outrun the client it measures. On a 2.0 GHz EPYC (2026-12-04)
    # uvicorn's pure-Python h11 parser and the stdlib loop capped it near 1,190 answers/s, below
    # the bare client loop; httptools and uvloop (the test extra) lift that cap.
    uvicorn.run(server, host="127.0.0.1", port=args.port, log_level="critical", backlog=4096,
                http="httptools", loop="uvloop")
