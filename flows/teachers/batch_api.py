"""The OpenAI Batch API path (teacher.batch_api: true) for large offline jobs: half the price,
answers within 24 h. Requests go up as JSONL files of at most 50,000 lines, the batches are
polled, and their output lines come back as ordinary replies, so the cache, rows, resume and
accounting are the same as online.

A submitted batch is remembered in STAIRS_HOME/batches/<digest>.json (batch ids only, no key):
a run killed while waiting picks the same batch up again instead of paying for it twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
from pathlib import Path
from typing import AsyncIterator, Iterable

from flows.teachers.base import Reply, Request, TeacherUnreachable
from flows.teachers.openai_compat import OpenAITeacher, api_key, logprobs_of
from flows.teachers.replies import bad, from_choice
from flows.teachers.transport import FATAL_WHY, OPENAI_URL
from flows.urls import redact

MAX_LINES = 50_000  # the Batch API's limit per input file
DONE = {"completed", "failed", "expired", "cancelled"}


def _state_file(requests: list[Request]) -> Path:
    from flows.settings import stairs_home

    digest = hashlib.sha256("\n".join(r.key for r in requests).encode()).hexdigest()[:24]
    folder = stairs_home() / "batches"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{digest}.json"


class OpenAIBatchTeacher(OpenAITeacher):
    poll_first_s = 0.2
    poll_max_s = 60.0
    # A Batch API job is not requests in flight at an endpoint: a generate batch holds no
    # slots of an endpoint limit for the hours a job may take.
    endpoint_for_limit = None

    async def stream(self, requests: Iterable[Request], *, stop=None
                     ) -> AsyncIterator[list[tuple[Request, Reply]]]:
        import openai

        if stop is not None and stop():
            return
        pending = list(requests)
        if self.spec.max_requests is not None:  # budgets apply at submission
            pending = pending[:max(0, self.spec.max_requests - self.usage.requests)]
        client = openai.AsyncOpenAI(base_url=self.base_url or OPENAI_URL,
                                    api_key=api_key(self.spec.api_key_env), max_retries=5,
                                    timeout=self.spec.timeout)
        try:
            for start in range(0, len(pending), MAX_LINES):
                chunk = pending[start:start + MAX_LINES]
                state = _state_file(chunk)
                batch_id = json.loads(state.read_text())["batch"] if state.exists() else None
                if batch_id is None:
                    batch_id = await self._submit(client, chunk)
                    state.write_text(json.dumps({"batch": batch_id}))
                self.usage.requests += len(chunk)
                batch = await self._wait(client, batch_id)
                yield await self._results(client, batch, chunk)
                state.unlink(missing_ok=True)
        except openai.APIConnectionError as e:
            raise TeacherUnreachable(f"teacher {self.name} (batch API): cannot reach "
                                     f"{redact(self.base_url or OPENAI_URL)}: {e}") from None
        except openai.APIStatusError as e:
            if e.status_code not in FATAL_WHY:
                raise
            raise TeacherUnreachable(f"teacher {self.name} (batch API): "
                                     f"{redact(str(e.request.url))} answered http "
                                     f"{e.status_code} ({FATAL_WHY[e.status_code]})") from None
        finally:
            await client.close()

    async def _submit(self, client, chunk: list[Request]) -> str:
        lines = "".join(json.dumps({"custom_id": r.key, "method": "POST",
                                    "url": "/v1/chat/completions", "body": self._params(r)})
                        + "\n" for r in chunk)
        upload = await client.files.create(file=("stairs-batch.jsonl", io.BytesIO(
            lines.encode())), purpose="batch")
        batch = await client.batches.create(input_file_id=upload.id, completion_window="24h",
                                            endpoint="/v1/chat/completions")
        return batch.id

    async def _wait(self, client, batch_id: str):
        delay = self.poll_first_s
        while True:
            batch = await client.batches.retrieve(batch_id)
            if batch.status in DONE:
                return batch
            await asyncio.sleep(delay)
            delay = min(self.poll_max_s, delay * 2)

    async def _results(self, client, batch, chunk: list[Request]) -> list[tuple[Request, Reply]]:
        by_key = {r.key: r for r in chunk}
        answers: dict[str, Reply] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            text = (await client.files.content(file_id)).text
            for line in text.splitlines():
                if line.strip():
                    item = json.loads(line)
                    answers[item["custom_id"]] = self._reply(item)
        # Lines the batch never answered (expired, cancelled) are left for the next run.
        why = f"request_failed: batch {batch.id} {batch.status}"
        return [(r, answers.get(r.key) or Reply(error=why, transient=True)) for r in chunk
                if r.key in by_key]

    def _reply(self, item: dict) -> Reply:
        response = item.get("response") or {}
        status = response.get("status_code")
        if item.get("error") or status != 200:
            err = item.get("error") or {"status": status}
            transient = status in (None, 429, 500, 502, 503, 504)
            return Reply(error=f"request_failed: {json.dumps(err)[:200]}", transient=transient)
        body = response.get("body")
        try:
            choice = body["choices"][0]
            logprobs = logprobs_of(choice, self.spec.top_logprobs)
        except (TypeError, KeyError, IndexError, AttributeError, ValueError):
            return bad("no choices in the batch line's body")
        return from_choice(choice, body.get("usage"), logprobs)
