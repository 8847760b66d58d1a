"""Teacher backend for any OpenAI-compatible chat-completions endpoint: OpenAI itself,
`vllm serve`, llama.cpp's server (the `llamacpp` backend drives this one too).

Bounded concurrency with AIMD adaptation, optional requests/tokens per minute, retries with
backoff that honours Retry-After, per-request timeouts. The openai client's own retries are off
(max_retries=0) so every retry goes through our limiter and is counted.
"""

from __future__ import annotations

import asyncio
import os
from typing import AsyncIterator, Iterable

import httpx
import openai

from flows.teachers.aio import run_coroutine
from flows.teachers.base import Reply, Request, TeacherUnreachable, Usage
from flows.teachers.limits import AdaptiveLimit, PerMinute, backoff_delay, parse_retry_after

# Statuses worth retrying; 429 and 503 also mean "slow down" (AIMD cut).
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
SATURATION_STATUS = {429, 503}


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


def _logprobs(choice) -> list | None:
    lp = getattr(choice, "logprobs", None)
    content = getattr(lp, "content", None) if lp is not None else None
    if not content:
        return None
    return [{"token": t.token, "logprob": t.logprob,
             "top": [[c.token, c.logprob] for c in (t.top_logprobs or [])]} for t in content]


class _Retryable(Exception):
    def __init__(self, why: str, retry_after: float | None = None, saturated: bool = False):
        super().__init__(why)
        self.retry_after, self.saturated = retry_after, saturated


class OpenAITeacher:
    backend = "openai"

    def __init__(self, spec, *, base_url: str | None = None, identity: str | None = None,
                 name: str | None = None):
        self.spec = spec
        self.base_url = base_url or spec.base_url
        self.name = name or f"{self.backend}:{spec.model}"
        # The endpoint is part of the identity: "default" served by two servers is two models.
        self.identity = identity or f"openai:{self.base_url or 'api.openai.com'}:{spec.model}"
        self.usage = Usage()
        self.client: openai.AsyncOpenAI | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def _client(self) -> openai.AsyncOpenAI:
        # One client per event loop: httpx connections belong to the loop that opened them.
        limits = httpx.Limits(max_connections=self.spec.concurrency + 8,
                              max_keepalive_connections=self.spec.concurrency + 8)
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key(self.spec.api_key_env),
                                  max_retries=0, timeout=self.spec.timeout,
                                  http_client=httpx.AsyncClient(limits=limits))

    def start(self) -> None:
        run_coroutine(self._check())

    async def _check(self) -> None:
        """Fail fast: one cheap call before any real request."""
        client = self._client()
        try:
            await client.with_options(timeout=min(self.spec.timeout, 15.0)).models.list()
        except openai.APIConnectionError as e:
            raise TeacherUnreachable(
                f"teacher {self.name}: cannot reach {self.base_url or 'api.openai.com'} "
                f"({type(e).__name__}: {e.__cause__ or e}); is the server running?") from None
        except openai.AuthenticationError:
            raise TeacherUnreachable(f"teacher {self.name}: the endpoint rejected the API key "
                                     f"from ${self.spec.api_key_env}") from None
        except openai.APIStatusError:
            pass  # reachable; some servers simply have no /models
        finally:
            await client.close()

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

    async def _attempt(self, req: Request) -> Reply:
        try:
            resp = await self.client.chat.completions.create(**self._params(req))
        except openai.APITimeoutError:
            raise _Retryable("timeout", saturated=True) from None
        except openai.APIConnectionError as e:
            raise _Retryable(f"connection: {e.__cause__ or e}") from None
        except openai.APIStatusError as e:
            if e.status_code in RETRY_STATUS:
                raise _Retryable(f"http {e.status_code}", parse_retry_after(e.response.headers),
                                 saturated=e.status_code in SATURATION_STATUS) from None
            return Reply(error=f"request_failed: http {e.status_code}: {str(e)[:200]}")
        except (ValueError, KeyError, TypeError, openai.APIResponseValidationError) as e:
            raise _Retryable(f"malformed response: {type(e).__name__}") from None
        choices = getattr(resp, "choices", None)
        if not choices or getattr(choices[0], "message", None) is None:
            raise _Retryable("malformed response: no choices")
        choice = choices[0]
        msg = choice.message
        usage = getattr(resp, "usage", None)
        return Reply(text=msg.content or getattr(msg, "refusal", None) or "",
                     finish_reason=choice.finish_reason,
                     prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                     completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                     logprobs=_logprobs(choice))

    async def _one(self, req: Request, limit: AdaptiveLimit) -> tuple[Request, Reply]:
        attempt = 0
        while True:
            try:
                reply = await self._attempt(req)
                limit.success()
                return req, reply
            except _Retryable as r:
                kind = str(r).split(":")[0]
                self.usage.errors[kind] = self.usage.errors.get(kind, 0) + 1
                if r.saturated:
                    limit.saturated()
                attempt += 1
                if attempt > self.spec.max_retries:
                    if kind == "connection":
                        raise TeacherUnreachable(
                            f"teacher {self.name} stopped answering at "
                            f"{self.base_url or 'api.openai.com'}: {r} (after {attempt} tries)")
                    # Not written as a row: a later run of the same stage sends it again.
                    return req, Reply(error=f"request_failed: {r} (after {attempt} tries)",
                                      transient=True)
                self.usage.retries += 1
                await asyncio.sleep(backoff_delay(attempt, r.retry_after))

    async def stream(self, requests: Iterable[Request], *, stop=None
                     ) -> AsyncIterator[tuple[Request, Reply]]:
        spec = self.spec
        limit = AdaptiveLimit(spec.concurrency, adaptive=spec.adaptive)
        rpm, tpm = PerMinute(spec.rpm), PerMinute(spec.tpm)
        self.client = self._client()
        source = iter(requests)
        tasks: set[asyncio.Task] = set()
        exhausted = False
        try:
            while True:
                # Fill free slots; the loop is single-threaded, so no lock is needed here.
                while not exhausted and len(tasks) < limit.limit:
                    if stop is not None and stop():
                        exhausted = True
                        break
                    req = next(source, None)
                    if req is None:
                        exhausted = True
                        break
                    await rpm.take(1)
                    await tpm.take(_estimate_tokens(req))
                    self.usage.requests += 1
                    tasks.add(asyncio.create_task(self._one(req, limit)))
                if not tasks:
                    break
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    yield t.result()
        finally:
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self.usage.concurrency_min = limit.lowest
            self.usage.concurrency_final = limit.limit
            await self.client.close()
