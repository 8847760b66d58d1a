"""vLLM's offline engine in-process (GPU): the whole batch goes to `LLM.chat` in one call, so
vLLM's scheduler sees every request at once (continuous batching, prefix caching). vllm is the
optional extra `stairs[vllm]` and is imported only when this backend starts."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator, Iterable

from flows.models import file_identity, resolve_model
from flows.teachers.base import Reply, Request, TeacherUnreachable, Usage, token_logprob

# Submit in slices this big: answers reach the cache (and survive a crash) slice by slice,
# while each slice is still large enough to keep a GPU busy.
SLICE = 1024


class VLLMTeacher:
    backend = "vllm"

    def __init__(self, spec, *, base_dir: Path | None = None):
        self.spec = spec
        local = Path(spec.model).expanduser()
        if spec.model.startswith("catalog:") or local.exists() or spec.model == "smollm2-135m":
            self.model_ref = str(resolve_model(spec.model, base_dir=base_dir))
            self.identity = f"vllm:{file_identity(Path(self.model_ref))}"
        else:  # a hub id vLLM resolves from its own cache
            self.model_ref = spec.model
            self.identity = f"vllm:{spec.model}"
        self.name = f"vllm:{spec.model}"
        self.usage = Usage()
        self.llm = None

    def start(self) -> None:
        try:
            from vllm import LLM
        except ImportError:
            raise TeacherUnreachable("teacher backend 'vllm' needs the optional extra: "
                                     "pip install 'stairs[vllm]' (and a GPU)") from None
        self.llm = LLM(model=self.model_ref, seed=self.spec.seed or 0)

    def close(self) -> None:
        self.llm = None

    def _sampling_params(self, req: Request):
        from vllm import SamplingParams

        s = req.sampling
        extra = {}
        if s.json_schema is not None:
            try:  # vLLM >= 0.10 names it structured_outputs; older releases guided_decoding
                from vllm.sampling_params import StructuredOutputsParams
                extra["structured_outputs"] = StructuredOutputsParams(json=s.json_schema)
            except ImportError:
                from vllm.sampling_params import GuidedDecodingParams
                extra["guided_decoding"] = GuidedDecodingParams(json=s.json_schema)
        return SamplingParams(temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                              seed=s.seed, logprobs=s.top_logprobs or None, **extra)

    def _reply(self, output, k: int = 0) -> Reply:
        done = output.outputs[0]
        reply = Reply(text=done.text, finish_reason=done.finish_reason,
                      prompt_tokens=len(output.prompt_token_ids or []),
                      completion_tokens=len(done.token_ids))
        if done.logprobs:
            # vLLM gives the top k plus the sampled token per step; token_logprob keeps k.
            reply.logprobs = [
                token_logprob(step[tid].decoded_token, step[tid].logprob,
                              [(lp.decoded_token, lp.logprob) for lp in step.values()], k)
                for tid, step in zip(done.token_ids, done.logprobs)]
        return reply

    async def stream(self, requests: Iterable[Request], *, stop=None
                     ) -> AsyncIterator[list[tuple[Request, Reply]]]:
        import asyncio

        batch: list[Request] = []
        pending = iter(requests)
        while True:
            if stop is not None and stop():
                return
            batch = [r for _, r in zip(range(SLICE), pending)]
            if not batch:
                return
            self.usage.requests += len(batch)
            outputs = await asyncio.to_thread(
                self.llm.chat, [r.messages for r in batch],
                [self._sampling_params(r) for r in batch], use_tqdm=False)
            yield [(req, self._reply(output, req.sampling.top_logprobs))
                   for req, output in zip(batch, outputs)]
