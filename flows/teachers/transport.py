"""Two ways to send one chat-completions request, with one error vocabulary:
`Retryable` (429/5xx/timeouts/disconnects/malformed bodies), `Rejected` (a 4xx that will not
change on retry) and `TeacherUnreachable` (from check()).

`FastTransport` posts JSON with aiohttp directly. It is the default because the client is the
bottleneck of a saturated endpoint: measured here (2 shared cores, 2,000 requests, 64 in flight,
200 ms latency) it spends ~0.3 ms CPU per request against ~1.1 ms for the openai SDK's
low-level post (httpx2 request building) and ~2 ms for chat.completions.create, and reaches 87%
of ideal throughput against 58%. `SDKTransport` is the openai SDK itself, for endpoints that
need its extras (teacher.client: openai).
"""

from __future__ import annotations

import asyncio
import json

# Imported with the module, not on the first request: the import (0.2 s of CPU here, SSL
# contexts included) is a start-up cost, not part of the request loop.
import aiohttp
import orjson

from flows.teachers.base import TeacherUnreachable
from flows.teachers.limits import parse_retry_after
from flows.urls import redact

OPENAI_URL = "https://api.openai.com/v1"
# Statuses worth retrying; 429 and 503 also mean "slow down" (AIMD cut).
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
SATURATION_STATUS = {429, 503}


class Retryable(Exception):
    def __init__(self, why: str, retry_after: float | None = None, saturated: bool = False):
        super().__init__(why)
        self.retry_after, self.saturated = retry_after, saturated

    @property
    def kind(self) -> str:
        return str(self).split(":")[0]


class Rejected(Exception):
    """The endpoint refused this request for good (400 context too long, 404 model...)."""


# Statuses that will be the same for every request (bad key, no such model): stop the run
# instead of writing one error row per request.
FATAL_STATUS = {401, 403, 404}


FATAL_WHY = {401: "the API key was rejected", 403: "access is forbidden",
             404: "no such model or route"}


def _status_error(status: int, headers, text: str, url: str) -> Exception:
    if status in FATAL_STATUS:
        return TeacherUnreachable(f"{redact(url)} answered http {status} ({FATAL_WHY[status]}): "
                                  f"{' '.join(text.split())[:300]}")
    if status in RETRY_STATUS:
        return Retryable(f"http {status}", parse_retry_after(headers),
                         saturated=status in SATURATION_STATUS)
    return Rejected(f"http {status}: {text[:200]}")


def _unreachable(name: str, url: str, err) -> TeacherUnreachable:
    return TeacherUnreachable(f"teacher {name}: cannot reach {redact(url)} "
                              f"({type(err).__name__}: {err}); is the server running?")


def _orjson_str(obj) -> str:
    return orjson.dumps(obj).decode()


def _loads(raw: bytes):
    """orjson parses a reply 3.6x faster than json (2.0 against 7.1 us for the fake server's
    ~350-byte replies); json still reads what orjson refuses, such as NaN or -Infinity."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


class FastTransport:
    def __init__(self, base_url: str | None, api_key: str, timeout: float, concurrency: int):
        self.base = (base_url or OPENAI_URL).rstrip("/")
        self.url = f"{self.base}/chat/completions"
        # The key lives only in this session's default headers. orjson encodes the bench's
        # few-shot request body (1.4 KB) in 1.3 us, json in 12.1 (best of 15).
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency + 8),
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=aiohttp.ClientTimeout(total=timeout), json_serialize=_orjson_str)

    async def check(self, name: str) -> None:
        try:
            async with self.session.get(f"{self.base}/models",
                                        timeout=aiohttp.ClientTimeout(total=15)) as r:
                if r.status in (401, 403):
                    raise TeacherUnreachable(f"teacher {name}: {redact(self.base)}/models "
                                             f"answered http {r.status} ({FATAL_WHY[r.status]})")
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as e:
            raise _unreachable(name, self.base, e) from None

    async def chat(self, params: dict) -> dict:
        url = self.url
        try:
            async with self.session.post(url, json=params) as r:
                raw = await r.read()
                if r.status >= 400:
                    raise _status_error(r.status, r.headers, raw.decode(errors="replace"), url)
        except asyncio.TimeoutError:
            raise Retryable("timeout", saturated=True) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise Retryable(f"connection: {type(e).__name__}: {e}") from None
        try:
            return _loads(raw)
        except ValueError:
            raise Retryable("malformed response: not JSON") from None

    async def close(self) -> None:
        await self.session.close()


class SDKTransport:
    def __init__(self, base_url: str | None, api_key: str, timeout: float, concurrency: int):
        import openai

        self.openai = openai
        self.base = base_url or OPENAI_URL
        self.client = openai.AsyncOpenAI(base_url=self.base, api_key=api_key, max_retries=0,
                                         timeout=timeout)

    async def check(self, name: str) -> None:
        openai = self.openai
        try:
            await self.client.with_options(timeout=15.0).models.list()
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise TeacherUnreachable(f"teacher {name}: {redact(self.base)}/models answered "
                                     f"http {e.status_code} ({FATAL_WHY[e.status_code]})") \
                from None
        except openai.APIConnectionError as e:
            raise _unreachable(name, self.base, e.__cause__ or e) from None
        except openai.APIStatusError:
            pass  # reachable; some servers simply have no /models

    async def chat(self, params: dict) -> dict:
        openai = self.openai
        try:
            # cast_to=object: the parsed JSON, without building pydantic models per reply.
            return await self.client.post("/chat/completions", body=params, cast_to=object)
        except openai.APIConnectionError as e:
            if _timed_out(e):
                raise Retryable("timeout", saturated=True) from None
            raise Retryable(f"connection: {e.__cause__ or e}") from None
        except openai.APIStatusError as e:
            raise _status_error(e.status_code, e.response.headers, str(e),
                                f"{self.base.rstrip('/')}/chat/completions") from None
        except (ValueError, openai.APIResponseValidationError) as e:
            raise Retryable(f"malformed response: {type(e).__name__}") from None

    async def close(self) -> None:
        await self.client.close()


def _timed_out(error: BaseException) -> bool:
    """A real timeout somewhere in the cause chain: the exception class alone cannot say (the
    SDK's aiohttp transport reports a refused connection as a ConnectTimeout)."""
    seen = 0
    while error is not None and seen < 12:
        if isinstance(error, TimeoutError):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


TRANSPORTS = {"fast": FastTransport, "openai": SDKTransport}
