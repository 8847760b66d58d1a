"""A GGUF teacher answering in this process, several sequences per llama.cpp decode step
(flows/evaluate/batched.py), instead of through llama-cpp-python's server, which answers one
request at a time however many are sent.

make_teacher picks it for `backend: llamacpp` when every request wants only text (no top-k
logprobs, no JSON schema) and is greedy or sampled with a seed: the quickstart's embedded
teacher, every promoted student, and the climb's 4 samples per problem. Logprob and schema
requests, and sampled ones without a seed, keep the server (LlamaCppTeacher). A reply is the one
the server gives the same request (a sampled one through the server's sampler chain, seeded by
the request; the server's can differ right after another sample of the same prompt, whose cache
it reuses: docs/teachers.md), so the cache identity is the server path's: answers cached by
either are served to both.

Crash safety matches the HTTP path: a request is taken only when a slot is free, and each reply
goes to the caller (who caches it before its rows are written) as it finishes, so a kill loses
at most the `width` replies being decoded and any the caller has not yet recorded.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import AsyncIterator, Iterable

from flows.models import file_identity, resolve_model
from flows.teachers.base import Reply, Request, TeacherUnreachable, Usage


def answers_in_process(spec) -> bool:
    """True when this teacher's requests are text-only and reproducible (greedy, or seeded)."""
    return (spec.backend == "llamacpp" and not spec.top_logprobs and not spec.structured_output
            and (spec.temperature == 0.0 or spec.seed is not None))


class BatchedLlamaTeacher:
    backend = "llamacpp"
    endpoint_for_limit = None  # its own process is the limit (flows/generate/batches.py)

    def __init__(self, spec, *, base_dir: Path | None = None, n_ctx: int = 2048):
        self.spec = spec
        self.gguf = resolve_model(spec.model, base_dir=base_dir)
        self.name = f"llamacpp:{spec.model}"
        # The same identity as LlamaCppTeacher's: the same model, the same replies.
        self.identity = f"llamacpp:{file_identity(self.gguf)}:repeat_penalty=1.0"
        self.n_ctx = n_ctx
        self.base_dir = base_dir
        self.usage = Usage()
        self.engine = self.server = None

    def start(self) -> None:
        from flows.evaluate.engines import GGUFEngine

        try:
            self.engine = GGUFEngine(self.gguf, n_ctx=self.n_ctx)
        except (OSError, ValueError, RuntimeError) as e:
            raise TeacherUnreachable(f"teacher {self.name}: cannot load {self.gguf}: "
                                     f"{e}") from None
        self.decoder = self.engine.batched_decoder()
        if self.decoder is None:  # a named chat format, not the file's own template: the server
            self.close()
            from flows.teachers.llamacpp import LlamaCppTeacher

            self.server = LlamaCppTeacher(self.spec, base_dir=self.base_dir, n_ctx=self.n_ctx)
            self.server.usage = self.usage
            self.server.start()
            return
        self.usage.concurrency_min = self.usage.concurrency_final = self.decoder.width

    def close(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            engine.close()
        server, self.server = self.server, None
        if server is not None:
            server.close()

    async def stream(self, requests: Iterable[Request], *, stop=None
                     ) -> AsyncIterator[list[tuple[Request, Reply]]]:
        """Decodes in a worker thread (llama.cpp releases the GIL), so the caller records each
        finished reply while the next decode step runs."""
        if self.server is not None:
            async for answers in self.server.stream(requests, stop=stop):
                yield answers
            return
        loop = asyncio.get_running_loop()
        finished: asyncio.Queue = asyncio.Queue()
        source = iter(requests)
        ahead: list[Request] = []  # the next request, looked at before its slot is free
        closing = threading.Event()
        rejected: list[tuple[Request, Reply]] = []

        def take():
            while not closing.is_set() and not (stop is not None and stop()):
                req = ahead.pop() if ahead else next(source, None)
                if req is None:
                    return None
                self.usage.requests += 1
                try:
                    s = req.sampling
                    seq = self.decoder.sequence(0, req.messages, s.max_tokens,
                                                temperature=s.temperature, top_p=s.top_p,
                                                seed=s.seed)
                except ValueError as e:  # the server answers http 400: a row with the error
                    rejected.append((req, Reply(error=f"request_failed: {e}")))
                    continue
                seq.tag = req
                # Samples of one prompt come one after another: the next one copies this
                # one's evaluated prompt instead of evaluating it again.
                following = next(source, None)
                if following is not None:
                    ahead.append(following)
                    seq.keep_prompt = following.messages == req.messages
                return seq
            return None

        def work():
            copied = self.decoder.prompt_tokens_copied
            try:
                for seq in self.decoder.replies(take, closing.is_set):
                    reply = Reply(text=seq.reply, finish_reason=seq.finish_reason,
                                  prompt_tokens=len(seq.prompt),
                                  completion_tokens=len(seq.tokens))
                    loop.call_soon_threadsafe(finished.put_nowait, [*rejected, (seq.tag, reply)])
                    rejected.clear()
                if rejected:
                    loop.call_soon_threadsafe(finished.put_nowait, rejected[:])
                loop.call_soon_threadsafe(finished.put_nowait, None)
            except BaseException as e:  # re-raised in the caller's task below
                loop.call_soon_threadsafe(finished.put_nowait, e)
            finally:
                self.usage.prompt_tokens_copied += self.decoder.prompt_tokens_copied - copied

        worker = threading.Thread(target=work, name="stairs-llamacpp-batched", daemon=True)
        worker.start()
        try:
            while True:
                item = await finished.get()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    return
                yield item
        finally:
            closing.set()
            await asyncio.to_thread(worker.join)
