"""The two runtimes every evaluation goes through, behind one interface: llama.cpp for GGUF files
(llama-cpp-python in-process, so a quantized file is scored exactly as it is served) and torch for
transformers models (students, the int8/int4 folders through their dequantizing loader, GPTQ).

Both take chat messages, apply the model's own chat template, and decode greedily; both score the
same token ids for perplexity. `open_engine` picks one for any model reference.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import numpy as np

# Conversations decoded together by GGUFEngine (and the generate stage's llama.cpp teacher), at
# most: the probe (BatchedDecoder.exact_width) keeps fewer where wider steps would change a
# reply. 16, not 8: on the Intel Xeon machine the quickstart's generate stages took 138.6 and
# 96.9 s against 148.6 and 116.3 s at 8 (its quantize stages 4-7 s longer: wider probes), the
# whole run 762 against 780 s; on the AMD EPYC machine 8 and 16 were within noise. The KV
# cache is (width + 2) x n_ctx cells: +0.3 GiB peak for the quickstart (docs/benchmarks.md).
BATCH_WIDTH = 16
# Rows per batch in TorchEngine: score.CHUNK, so an evaluation of up to 32 rows is one batch. On
# a 135M student 20 rows took 12.5 s in one batch against 21 s in batches of 8, same replies.
TORCH_BATCH = 32


class Engine(Protocol):
    """What evaluation needs from a runtime; see GGUFEngine and TorchEngine."""

    name: str

    def generate(self, conversations: list[list[dict]],
                 max_new_tokens: int) -> tuple[list[str], int]: ...
    def logits(self, ids: list[int]) -> np.ndarray: ...
    def decode_speed(self, messages: list[dict], tokens: int) -> float: ...
    def close(self) -> None: ...


class GGUFEngine:
    """A GGUF file in llama.cpp. Replies are decoded up to `width` conversations at a time
    (flows/evaluate/batched.py), each the same text as create_chat_completion gives it alone:
    as many as decode exactly as alone on this file and CPU (BatchedDecoder.exact_width). Width
    1, a chat format that is not the file's own template, float weights, or a file whose
    several-row steps are not exact ask one at a time."""

    name = "llama.cpp"

    def __init__(self, path: Path, threads: int | None = None, n_ctx: int = 2048,
                 width: int = BATCH_WIDTH):
        from flows.evaluate.batched import chat_formatter, has_float_weights
        from flows.llama_cpu import open_llama
        from flows.settings import cpu_threads

        self.path = Path(path)
        self.threads = threads or cpu_threads()
        self._kw = dict(n_ctx=n_ctx, n_threads=self.threads, n_threads_batch=self.threads,
                        verbose=False)
        self.llm = open_llama(self.path, seed=0, **self._kw)
        # Float weights decode one at a time (batched.FLOAT_FILE_TYPES), without a probe and
        # without opening a batched context.
        self.width = 1 if has_float_weights(self.llm) else width
        self.formatter = chat_formatter(self.llm)  # None: a named chat format, one at a time
        self._batched = None
        self._scorer = None

    @property
    def scorer(self):
        # A second context with logits for every position, for perplexity only (computing them
        # for every prompt token would slow generation down); opened when first needed.
        if self._scorer is None:
            from flows.llama_cpu import open_llama

            self._scorer = open_llama(self.path, logits_all=True, **self._kw)
        return self._scorer

    def generate(self, conversations, max_new_tokens):
        if self.width > 1 and len(conversations) > 1 and self.formatter is not None:
            decoder = self.batched_decoder()
            if decoder.width > 1:
                texts, counts = decoder.generate(conversations, max_new_tokens)
                return texts, sum(counts)
        return self.generate_one_at_a_time(conversations, max_new_tokens)

    def batched_decoder(self):
        """The BatchedDecoder on this file (opened once and probed): up to `width` sequences
        per step, as many as give each the logits of its step alone; None for a named chat
        format."""
        if self.formatter is None:
            return None
        if self._batched is None:
            from flows.evaluate.batched import BatchedDecoder, probe_prompts

            decoder = BatchedDecoder(self.llm, self.formatter, self.width, self.threads)
            if self.width > 1:
                decoder.width = decoder.exact_width(probe_prompts(self.llm, self.width))
            self._batched = decoder
        return self._batched

    def generate_one_at_a_time(self, conversations, max_new_tokens):
        """llama-cpp-python's create_chat_completion per conversation, its prompt evaluated in
        the batched path's pieces: the prefix it shares with every row first (kept from the
        row before when it is the same), then the rest (create_chat_completion reuses the
        cached prefix). Not whatever prefix the previous row left cached: that made a row's
        reply depend on the row before it."""
        from flows.evaluate.batched import prompt_tokens

        llm = self.llm
        texts, generated = [], 0
        for messages in conversations:
            prompt, shared = [], 0
            if self.formatter is not None:
                prompt, shared, _ = prompt_tokens(llm, self.formatter, messages)
            kept = llm.input_ids[:min(shared, llm.n_tokens)].tolist()
            if shared and kept == prompt[:shared]:
                llm.n_tokens = shared  # the cache beyond it is dropped when the prompt is fed
            else:
                llm.reset()
                if shared:
                    llm.eval(prompt[:shared])
            reply = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1,
                                               max_tokens=max_new_tokens, seed=0)
            texts.append(reply["choices"][0]["message"]["content"] or "")
            generated += reply["usage"]["completion_tokens"]
        return texts, generated

    def bits_per_weight(self) -> float:
        """Tensor bytes over parameters, as llama.cpp loaded them (metadata and tokenizer do
        not count). From the open model: gguf's reader parses every metadata field, 49k
        tokenizer strings included, which took 5 s per file."""
        import llama_cpp as lc

        model = self.llm.model
        return 8 * lc.llama_model_size(model) / lc.llama_model_n_params(model)

    def logits(self, ids):
        """[len(ids) - 1, vocab] float32 (what llama.cpp computes): row t is the next-token
        logits after ids[:t + 1]."""
        self.scorer.reset()
        self.scorer.eval(ids)
        return np.array(self.scorer.scores[: len(ids) - 1], dtype=np.float32)  # a copy

    def decode_speed(self, messages, tokens):
        eos = self.llm.token_eos()
        t_first = t_end = None
        n = 0
        for chunk in self.llm.create_chat_completion(
                messages=messages, max_tokens=tokens, temperature=0.0, stream=True,
                logit_bias={eos: -1e9}):
            if chunk["choices"][0]["delta"].get("content") is None:
                continue
            n += 1
            t_end = time.perf_counter()
            if t_first is None:
                t_first = t_end
        if t_first is None or n < 2:
            return 0.0
        # Decode rate only: the first token's time is prompt processing.
        return (n - 1) / (t_end - t_first)

    def close(self):
        if self._batched is not None:
            self._batched.close()  # before the model its context uses
        for llm in (self.llm, self._scorer):
            if llm is not None:
                llm.close()


class TorchEngine:
    name = "torch"

    def __init__(self, model, tokenizer, threads: int | None = None,
                 batch_size: int = TORCH_BATCH):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()
        self.tok = tokenizer
        if self.tok.pad_token is None:
            # Padding is masked out of attention, so any token will do.
            self.tok.pad_token = self.tok.eos_token
        self.batch_size = batch_size

    def _prompt_ids(self, messages):
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)

    def generate(self, conversations, max_new_tokens):
        import torch

        tok = self.tok
        side, tok.padding_side = tok.padding_side, "left"  # generation continues at the end
        device = next(self.model.parameters()).device
        results: dict[int, str] = {}
        generated = 0
        try:
            # Longest prompts first keeps batches of similar length (less padding to attend over).
            order = sorted(range(len(conversations)), key=lambda i: -len(str(conversations[i])))
            for b in range(0, len(order), self.batch_size):
                idx = order[b:b + self.batch_size]
                prompts = [tok.apply_chat_template(conversations[i], tokenize=False,
                                                   add_generation_prompt=True) for i in idx]
                enc = tok(prompts, return_tensors="pt", padding=True,
                          add_special_tokens=False).to(device)
                with torch.no_grad():
                    out = self.model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                              pad_token_id=tok.pad_token_id,
                                              eos_token_id=tok.eos_token_id)
                for i, seq in zip(idx, out[:, enc["input_ids"].shape[1]:]):
                    ids = seq.tolist()
                    if tok.eos_token_id in ids:
                        ids = ids[:ids.index(tok.eos_token_id) + 1]
                    generated += len(ids)
                    results[i] = tok.decode(ids, skip_special_tokens=True)
        finally:
            tok.padding_side = side
        return [results[i] for i in range(len(conversations))], generated

    def logits(self, ids):
        import torch

        device = next(self.model.parameters()).device
        with torch.no_grad():
            return self.model(torch.tensor([ids], device=device)).logits[0, :-1].float().cpu().numpy()

    def decode_speed(self, messages, tokens):
        import torch

        ids = torch.tensor([list(self._prompt_ids(messages))])
        eos = self.tok.eos_token_id
        timings = {}
        for n in (1, tokens):
            start = time.perf_counter()
            with torch.no_grad():
                self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                    suppress_tokens=[eos], pad_token_id=eos)
            timings[n] = time.perf_counter() - start
        return (tokens - 1) / max(timings[tokens] - timings[1], 1e-9)

    def close(self):
        pass


class EndpointEngine:
    """A teacher asked through its own backend (an OpenAI-compatible endpoint, vLLM), for scoring
    a teacher that stairs cannot open in-process. Greedy, one request per row, through the
    response cache (a rerun pays nothing) and inside the teacher's budget
    (teacher.max_requests / max_total_tokens). Rows left unanswered (budget reached, requests
    failed) are counted in `unanswered`: a caller must not read a partial score as a score."""

    name = "endpoint"

    def __init__(self, teacher_spec, catalog, *, base_dir: Path | None = None):
        from flows.teachers import make_teacher
        from flows.teachers.cache import ResponseCacheStore

        # Greedy, no logprobs, no schema: the answer alone, asked the way students are scored.
        self.spec = teacher_spec.model_copy(update={
            "temperature": 0.0, "top_logprobs": 0, "samples": 1, "structured_output": False})
        self.teacher = make_teacher(self.spec, base_dir=base_dir)
        self.cache = ResponseCacheStore(catalog)
        self.sent = self.cache_hits = self.unanswered = 0
        self.prompt_tokens = self.completion_tokens = 0

    def generate(self, conversations, max_new_tokens):
        from flows.teachers import Request, Sampling, request_key, running
        from flows.teachers.aio import run_coroutine

        sampling = Sampling(0.0, 1.0, max_new_tokens, self.spec.seed, 0)
        requests = [Request(request_key(self.teacher.identity, m, sampling, 0), m, sampling, 0, i)
                    for i, m in enumerate(conversations)]
        replies = self.cache.lookup([r.key for r in requests])
        self.cache_hits += sum(r.key in replies for r in requests)
        misses = [r for r in requests if r.key not in replies]
        spec, usage = self.spec, self.teacher.usage

        def over_budget() -> bool:
            tokens = self.prompt_tokens + self.completion_tokens
            return ((spec.max_requests is not None and usage.requests >= spec.max_requests)
                    or (spec.max_total_tokens is not None and tokens >= spec.max_total_tokens))

        async def send():
            async for answers in self.teacher.stream(misses, stop=over_budget):
                self.cache.put(self.teacher.backend, self.teacher.identity,
                               [(q.key, a) for q, a in answers])
                for q, a in answers:
                    self.prompt_tokens += a.prompt_tokens
                    self.completion_tokens += a.completion_tokens
                    if a.error is None:
                        replies[q.key] = a

        if misses:
            with running(self.teacher):
                run_coroutine(send())
            self.sent += usage.requests
        texts = [replies[r.key].text if r.key in replies else "" for r in requests]
        self.unanswered += sum(r.key not in replies for r in requests)
        return texts, sum(replies[r.key].completion_tokens for r in requests if r.key in replies)

    def close(self):
        self.cache.close()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def open_engine(ref: str, *, catalog=None, threads: int | None = None,
                batch_size: int = TORCH_BATCH,
                device: str = "cpu") -> Engine:
    """The engine for a model reference: llama.cpp for a GGUF file, torch for an HF folder."""
    from flows.models import load, resolve

    resolved = resolve(str(ref), catalog)
    if resolved.kind == "gguf":
        return GGUFEngine(resolved.path, threads=threads)
    model, tokenizer, _ = load(str(ref), catalog=catalog, device=device)
    return TorchEngine(model, tokenizer, threads=threads, batch_size=batch_size)
