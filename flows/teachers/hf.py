"""In-process teacher on transformers: small local models (an HF folder or a GGUF file, which
transformers dequantizes), one request at a time on CPU. Its point is white-box access: the
raw logits of every generated token, kept as top-k logprobs with the row for later
logit distillation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator, Iterable

from flows.models import file_identity, resolve_model
from flows.teachers.base import Reply, Request, TeacherUnreachable, Usage, token_logprob


class TransformersTeacher:
    backend = "transformers"

    def __init__(self, spec, *, base_dir: Path | None = None):
        self.spec = spec
        self.path = resolve_model(spec.model, base_dir=base_dir)
        self.name = f"transformers:{spec.model}"
        self.identity = f"transformers:{file_identity(self.path)}"
        self.usage = Usage()
        self.model = self.tokenizer = None

    def start(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self.path.is_file():  # a GGUF file: transformers reads it from its folder
            where, extra = str(self.path.parent), {"gguf_file": self.path.name}
        else:
            where, extra = str(self.path), {}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where, **extra)
            self.model = AutoModelForCausalLM.from_pretrained(where, **extra)
        except (OSError, ValueError) as e:
            raise TeacherUnreachable(f"teacher {self.name}: cannot load {self.path}: {e}") from None
        self.model.eval()

    def close(self) -> None:
        self.model = self.tokenizer = None

    def generate_one(self, req: Request) -> Reply:
        import torch

        s = req.sampling
        tok = self.tokenizer
        ids = tok.apply_chat_template(req.messages, add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        if s.seed is not None:
            torch.manual_seed(s.seed)
        sample = s.temperature > 0
        with torch.inference_mode():
            out = self.model.generate(
                **ids, max_new_tokens=s.max_tokens, do_sample=sample,
                temperature=s.temperature if sample else None, top_p=s.top_p if sample else None,
                return_dict_in_generate=True, output_logits=bool(s.top_logprobs),
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
        prompt_len = ids["input_ids"].shape[1]
        new = out.sequences[0, prompt_len:].tolist()
        eos = set(self.model.generation_config.eos_token_id or []) if isinstance(
            self.model.generation_config.eos_token_id, list) else {
            self.model.generation_config.eos_token_id}
        finished = bool(new) and new[-1] in eos
        reply = Reply(text=tok.decode(new, skip_special_tokens=True),
                      finish_reason="stop" if finished or len(new) < s.max_tokens else "length",
                      prompt_tokens=prompt_len, completion_tokens=len(new))
        if s.top_logprobs:
            reply.logprobs = self._top_logprobs(out.logits, new, s.top_logprobs)
        return reply

    def _top_logprobs(self, logits, new: list[int], k: int) -> list:
        import torch

        rows = []
        for step, token_id in enumerate(new):
            logp = torch.log_softmax(logits[step][0].float(), dim=-1)
            top = torch.topk(logp, k)
            rows.append(token_logprob(
                self.tokenizer.decode([token_id]), float(logp[token_id]),
                [(self.tokenizer.decode([int(i)]), float(v))
                 for v, i in zip(top.values, top.indices)], k))
        return rows

    async def stream(self, requests: Iterable[Request], *, stop=None
                     ) -> AsyncIterator[list[tuple[Request, Reply]]]:
        for req in requests:
            if stop is not None and stop():
                return
            self.usage.requests += 1
            # A worker thread keeps the event loop free to record answers as they arrive.
            reply = await asyncio.to_thread(self.generate_one, req)
            yield [(req, reply)]
