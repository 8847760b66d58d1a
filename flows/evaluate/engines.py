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


class Engine(Protocol):
    """What evaluation needs from a runtime; see GGUFEngine and TorchEngine."""

    name: str

    def generate(self, conversations: list[list[dict]],
                 max_new_tokens: int) -> tuple[list[str], int]: ...
    def nll(self, ids: list[int]) -> float: ...
    def decode_speed(self, messages: list[dict], tokens: int) -> float: ...
    def close(self) -> None: ...


class GGUFEngine:
    name = "llama.cpp"

    def __init__(self, path: Path, threads: int | None = None, n_ctx: int = 2048):
        from llama_cpp import Llama

        from flows.settings import cpu_threads

        self.path = Path(path)
        threads = threads or cpu_threads()
        self._kw = dict(n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        self.llm = Llama(str(self.path), seed=0, **self._kw)
        self._scorer = None

    @property
    def scorer(self):
        # A second context with logits for every position, for perplexity only (computing them
        # for every prompt token would slow generation down); opened when first needed.
        if self._scorer is None:
            from llama_cpp import Llama

            self._scorer = Llama(str(self.path), logits_all=True, **self._kw)
        return self._scorer

    def generate(self, conversations, max_new_tokens):
        texts, generated = [], 0
        for messages in conversations:
            reply = self.llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1,
                                                    max_tokens=max_new_tokens, seed=0)
            texts.append(reply["choices"][0]["message"]["content"] or "")
            generated += reply["usage"]["completion_tokens"]
        return texts, generated

    def nll(self, ids):
        self.scorer.reset()
        self.scorer.eval(ids)
        logits = np.asarray(self.scorer.scores[: len(ids) - 1], dtype=np.float64)
        return nll_from_logits(logits, np.asarray(ids[1:]))

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
        for llm in (self.llm, self._scorer):
            if llm is not None:
                llm.close()


class TorchEngine:
    name = "torch"

    def __init__(self, model, tokenizer, threads: int | None = None, batch_size: int = 8):
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

    def nll(self, ids):
        import torch

        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0, :-1].double().numpy()
        return nll_from_logits(logits, np.asarray(ids[1:]))

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


def nll_from_logits(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed negative log-likelihood of targets under row-wise softmax(logits)."""
    top = logits.max(axis=1, keepdims=True)
    logz = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float((logz - logits[np.arange(len(targets)), targets]).sum())


def open_engine(ref: str, *, catalog=None, threads: int | None = None, batch_size: int = 8,
                device: str = "cpu") -> Engine:
    """The engine for a model reference: llama.cpp for a GGUF file, torch for an HF folder."""
    from flows.models import load, resolve

    resolved = resolve(str(ref), catalog)
    if resolved.kind == "gguf":
        return GGUFEngine(resolved.path, threads=threads)
    model, tokenizer, _ = load(str(ref), catalog=catalog, device=device)
    return TorchEngine(model, tokenizer, threads=threads, batch_size=batch_size)
