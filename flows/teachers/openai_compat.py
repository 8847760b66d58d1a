"""Teacher backend for any OpenAI-compatible chat-completions endpoint: OpenAI itself,
`vllm serve`, llama.cpp's server (the `llamacpp` backend drives this one too).

Bounded concurrency with AIMD adaptation, optional requests/tokens per minute, retries with
backoff that honours Retry-After, per-request timeouts, a cheap reachability check before the
first request. Requests go through flows/teachers/transport.py (aiohttp by default, or the
openai SDK with its own retries off, so every retry goes through our limiter and is counted).
"""

from __future__ import annotations

import asyncio
import copy
import os
from typing import AsyncIterator, Iterable

from flows.teachers.base import Reply, Request, TeacherUnreachable, Usage, token_logprob
from flows.teachers.health import Health
from flows.teachers.limits import AdaptiveLimit, PerMinute, backoff_delay
from flows.teachers.replicas import REPLICA_DOWN, ReplicaPool
from flows.teachers.replies import bad, from_choice
from flows.teachers.transport import OPENAI_URL, TRANSPORTS, Rejected, Retryable
from flows.urls import model_host, redact


def api_key(env_name: str | None) -> str:
    """The key from the named environment variable. Held only in the client object; never put
    in a row, cache key, log line, parameter or artifact."""
    if env_name is None:
        return "not-needed"  # local servers ignore it, but the client insists on one
    key = os.environ.get(env_name)
    if not key:
        raise TeacherUnreachable(f"teacher.api_key_env: environment variable {env_name} is "
                                 "not set (it should hold the API key)")
    return key


def _estimate_tokens(req: Request) -> int:
    # ~4 characters per token: good enough to pace a tokens-per-minute budget before the
    # server tells us the real count.
    chars = sum(len(m.get("content") or "") for m in req.messages)
    return chars // 4 + req.sampling.max_tokens


def logprobs_of(choice: dict, k: int) -> list | None:
    """A chat completion's `logprobs.content` ([{token, logprob, top_logprobs: [{token,
    logprob}]}], the OpenAI layout that vLLM and llama.cpp's servers return too) in the layout
    stairs stores (base.token_logprob)."""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return None
    return [token_logprob(t.get("token"), t.get("logprob"),
                          [(c.get("token"), c.get("logprob")) for c in t.get("top_logprobs") or []],
                          k)
            for t in content]


class OpenAITeacher:
    backend = "openai"

    def __init__(self, spec, *, base_url: str | None = None, identity: str | None = None,
                 name: str | None = None):
        self.spec = spec
        urls = spec.base_url if isinstance(spec.base_url, list) else [spec.base_url]
        self.base_url = base_url or urls[0]
        # Replicas of one model (flows/teachers/replicas.py); the first names it in the cache key.
        self.replica_urls = list(urls) if base_url is None and len(urls) > 1 else []
        self.name = name or f"{self.backend}:{spec.model}"
        # The model's identity, not the URL as typed: the model name the endpoint serves and
        # the host serving it (flows/urls.py: no port, path or trailing slash; every loopback
        # spelling alike). The same model behind another URL of that host hits the cache; any
        # other model name misses it. Weights swapped behind an unchanged name cannot be seen
        # from here: serve them under another name (docs/teachers.md).
        self.identity = identity or f"openai:{model_host(self.base_url)}:{spec.model}"
        self.usage = Usage()
        self.transport = None
        self.concurrency = spec.concurrency  # requests in flight at most (a batch may hold fewer)

    @property
    def endpoint_for_limit(self) -> str | list[str]:
        """The endpoint (or every replica) whose global concurrency limit a generate batch holds
        slots of."""
        return self.replica_urls or self.base_url or OPENAI_URL

    def for_batch(self) -> "OpenAITeacher":
        """A copy for one generate batch, picklable for a Dask or Ray worker: its own counters
        and connections, the same endpoint (already started), nothing to start or close."""
        batch = copy.copy(self)
        batch.usage, batch.transport = Usage(), None
        return batch

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Nothing to start for a remote endpoint: stream() checks that it answers (one cheap
        call, in the same event loop and connection pool as the requests) before the first
        request, and only when there is something to send."""

    def close(self) -> None:
        pass

    # -- requests ------------------------------------------------------------------------------
    def response_format(self, schema: dict) -> dict:
        return {"type": "json_schema", "json_schema": {"name": "row", "schema": schema}}

    def _params(self, req: Request) -> dict:
        s = req.sampling
        params = {"model": self.spec.model, "messages": req.messages,
                  "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
        if s.seed is not None:
            params["seed"] = s.seed
        if s.top_logprobs:
            params["logprobs"] = True
            params["top_logprobs"] = s.top_logprobs
        if s.json_schema is not None:
            params["response_format"] = self.response_format(s.json_schema)
        return params

    async def _attempt(self, req: Request, transport=None) -> Reply:
        try:
            body = await (transport or self.transport).chat(self._params(req))
        except Rejected as e:
            return Reply(error=f"request_failed: {e}")
        try:
            choice = body["choices"][0]
            choice["message"]  # noqa: B018
        except (TypeError, KeyError, IndexError):
            raise Retryable("malformed response: no choices") from None
        try:
            logprobs = logprobs_of(choice, req.sampling.top_logprobs)
        except (AttributeError, TypeError, ValueError):  # ValueError: a logprob that is no number
            return bad("logprobs in an unknown shape")
        # Checked and normalised here, before the dispatcher caches it (flows/teachers/replies.py).
        return from_choice(choice, body.get("usage"), logprobs)

    async def _one(self, req: Request, limit: AdaptiveLimit,
                   health: Health) -> tuple[Request, Reply]:
        attempt = 0
        while True:
            try:
                reply = await self._attempt(req)
                limit.success()
                health.record(True)
                return req, reply
            except Retryable as r:
                kind = r.kind
                self.usage.errors[kind] = self.usage.errors.get(kind, 0) + 1
                if r.saturated:
                    limit.saturated()
                attempt += 1
                if attempt > self.spec.max_retries:
                    health.record(False)
                    await self._stop_if_unreachable(r, attempt, health)
                    # The endpoint still answers: only this request is left, unwritten and
                    # uncached, for a later run of the same stage to send again.
                    return req, Reply(error=f"request_failed: {r} (after {attempt} tries)",
                                      transient=True)
                self.usage.retries += 1
                await asyncio.sleep(backoff_delay(attempt, r.retry_after))

    async def _one_of_replicas(self, req: Request, limit: AdaptiveLimit,
                               pool: ReplicaPool) -> tuple[Request, Reply]:
        attempt = 0
        while True:
            replica = await pool.acquire()
            try:
                reply = await self._attempt(req, replica.transport)
            except Retryable as r:
                kind = r.kind
                self.usage.errors[kind] = self.usage.errors.get(kind, 0) + 1
                if r.saturated:
                    limit.saturated()
                if kind in REPLICA_DOWN:
                    pool.take_out(replica)
                await pool.release(replica)
                attempt += 1
                if attempt > self.spec.max_retries:
                    if not pool.any_up():
                        raise TeacherUnreachable(f"teacher {self.name}: every replica failed: "
                                                 f"{pool.describe()} (last: {r})") from None
                    return req, Reply(error=f"request_failed: {r} (after {attempt} tries)",
                                      transient=True)
                self.usage.retries += 1
                if not (kind in REPLICA_DOWN and pool.any_up()):  # else: resend elsewhere now
                    await asyncio.sleep(backoff_delay(attempt, r.retry_after))
                continue
            await pool.release(replica)
            limit.success()
            return req, reply

    async def _stop_if_unreachable(self, last: Retryable, tries: int, health: Health) -> None:
        """One request outliving its retries stops nothing; the endpoint as a whole failing
        does: most recent requests failed, or (after disconnects and timeouts) its health
        check fails too."""
        where = redact(self.base_url or OPENAI_URL)
        if health.failing():
            raise TeacherUnreachable(
                f"teacher {self.name} at {where}: {health.describe()} (last: {last})")
        if last.kind in ("connection", "timeout"):
            try:
                await self.transport.check(self.name)
            except TeacherUnreachable as e:
                raise TeacherUnreachable(f"teacher {self.name} stopped answering at {where}: "
                                         f"{last} (after {tries} tries); {e}") from None

    async def stream(self, requests: Iterable[Request], *, stop=None
                     ) -> AsyncIterator[list[tuple[Request, Reply]]]:
        spec = self.spec
        limit = AdaptiveLimit(self.concurrency, adaptive=spec.adaptive)
        rpm, tpm = PerMinute(spec.rpm), PerMinute(spec.tpm)
        health = Health()
        key = api_key(spec.api_key_env)
        pool = None
        if self.replica_urls:
            pool = ReplicaPool(self.replica_urls, [
                TRANSPORTS[spec.client](u, key, spec.timeout, self.concurrency)
                for u in self.replica_urls], limit, spec.replica_retry_s)
            self.transport = pool  # closed with the others
        else:
            self.transport = TRANSPORTS[spec.client](self.base_url, key, spec.timeout,
                                                     self.concurrency)
        # With replicas, each has `limit` slots: the pool hands them out.
        width = len(self.replica_urls) if pool else 1
        source = iter(requests)
        tasks: set[asyncio.Task] = set()
        # Finished tasks land here through a done-callback: O(1) per answer, where
        # asyncio.wait(FIRST_COMPLETED) would re-arm every in-flight task on each answer.
        finished: asyncio.Queue[asyncio.Task] = asyncio.Queue()
        exhausted = False
        try:
            await (pool or self.transport).check(self.name)
            while True:
                # Fill free slots; the loop is single-threaded, so no lock is needed here.
                while not exhausted and len(tasks) < limit.limit * width:
                    if stop is not None and stop():
                        exhausted = True
                        break
                    req = next(source, None)
                    if req is None:
                        exhausted = True
                        break
                    if rpm.rate is not None:  # no awaits per request when there is no limit
                        await rpm.take(1)
                    if tpm.rate is not None:
                        await tpm.take(_estimate_tokens(req))
                    self.usage.requests += 1
                    task = asyncio.create_task(
                        self._one_of_replicas(req, limit, pool) if pool else
                        self._one(req, limit, health))
                    task.add_done_callback(finished.put_nowait)
                    tasks.add(task)
                if not tasks:
                    break
                # Everything that finished by now goes out as one batch: the caller then records
                # it in one cache transaction instead of one per answer.
                batch = [await finished.get()]
                while not finished.empty():
                    batch.append(finished.get_nowait())
                tasks.difference_update(batch)
                # Every failure of the batch is looked at (a revoked key fails them all at once):
                # the first is raised, and none is left for asyncio to log at exit as "never
                # retrieved".
                for error in [t.exception() for t in batch]:
                    if error is not None:
                        raise error
                yield [t.result() for t in batch]
        finally:
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self.usage.concurrency_min = limit.lowest
            self.usage.concurrency_final = limit.limit
            if pool is not None:
                self.usage.replicas = pool.counts()
            await self.transport.close()
