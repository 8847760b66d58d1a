"""The measurements every artifact of the quantize stage gets, from one engine-neutral interface:
accuracy on held-out eval rows (greedy, answer after 'Answer:', scored by flows/answers.py),
perplexity on the eval rows' text with their gold answers, decode tokens/s, size and bits/weight.

GGUF files run in llama.cpp (llama-cpp-python in-process); transformers folders (the student,
the int8/int4 files through their dequantizing loader, GPTQ) run in torch. Both engines get the
same chat-formatted prompts (the model's own chat template) and score the same token ids.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Protocol

import numpy as np

from flows.answers import answers_match, extract_answer


def perplexity_text(row: dict) -> str:
    return f"{row['passage']}\n{row['question']}\nAnswer: {row['answer']}"


class Engine(Protocol):
    """What measure() needs from a runtime; see GGUFEngine and TorchEngine."""

    def generate(self, messages: list[list[dict]], max_new_tokens: int) -> list[str]: ...
    def nll(self, ids: list[int]) -> float: ...
    def decode_speed(self, messages: list[dict], tokens: int) -> float: ...
    def close(self) -> None: ...


class GGUFEngine:
    def __init__(self, path: Path, threads: int | None = None, n_ctx: int = 2048):
        from llama_cpp import Llama

        self.path = Path(path)
        kw = dict(n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        self.llm = Llama(str(self.path), **kw)
        # A second context with logits for every position, for perplexity only (computing them
        # for every prompt token would slow generation down).
        self.scorer = Llama(str(self.path), logits_all=True, **kw)

    def generate(self, messages, max_new_tokens):
        out = []
        for m in messages:
            r = self.llm.create_chat_completion(messages=m, max_tokens=max_new_tokens,
                                                temperature=0.0, seed=0)
            out.append(r["choices"][0]["message"]["content"] or "")
        return out

    def nll(self, ids):
        self.scorer.reset()
        self.scorer.eval(ids)
        logits = np.asarray(self.scorer.scores[: len(ids) - 1], dtype=np.float64)
        return _nll_from_logits(logits, np.asarray(ids[1:]))

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
        for llm in (self.llm, self.scorer):
            llm.close()


class TorchEngine:
    def __init__(self, model, tokenizer, threads: int | None = None, batch_size: int = 8):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()
        self.tok = tokenizer
        self.batch_size = batch_size

    def _prompt_ids(self, messages):
        return self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)

    def generate(self, messages, max_new_tokens):
        import torch

        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        out = []
        for i in range(0, len(messages), self.batch_size):
            prompts = [list(self._prompt_ids(m)) for m in messages[i:i + self.batch_size]]
            width = max(map(len, prompts))
            # Left padding so every row's generation starts right after its own prompt.
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
            with torch.no_grad():
                gen = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                          max_new_tokens=max_new_tokens, pad_token_id=pad)
            out += self.tok.batch_decode(gen[:, width:], skip_special_tokens=True)
        return out

    def nll(self, ids):
        import torch

        with torch.no_grad():
            logits = self.model(torch.tensor([ids])).logits[0, :-1].double().numpy()
        return _nll_from_logits(logits, np.asarray(ids[1:]))

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


def _nll_from_logits(logits: np.ndarray, targets: np.ndarray) -> float:
    """Summed negative log-likelihood of targets under row-wise softmax(logits)."""
    top = logits.max(axis=1, keepdims=True)
    logz = top[:, 0] + np.log(np.exp(logits - top).sum(axis=1))
    return float((logz - logits[np.arange(len(targets)), targets]).sum())


def measure(engine, rows: list[dict], *, tokenizer, template: str, max_new_tokens: int,
            speed_tokens: int, speed_repeats: int = 3) -> dict:
    """Accuracy, perplexity and decode tokens/s of one engine on the same eval rows."""
    from flows.prompting import load_template

    # The generate stage's template without its worked examples, as the student was trained.
    prompt = load_template(template)
    messages = [prompt.render(r, few_shot=False) for r in rows]
    replies = engine.generate(messages, max_new_tokens)
    correct = [answers_match(extract_answer(text), r["answer"]) for text, r in zip(replies, rows)]
    total_nll, total_tokens = 0.0, 0
    for r in rows:
        ids = tokenizer(perplexity_text(r))["input_ids"]
        total_nll += engine.nll(ids)
        total_tokens += len(ids) - 1
    speeds = [engine.decode_speed(messages[0], speed_tokens) for _ in range(speed_repeats)]
    return {
        "accuracy": sum(correct) / len(rows) if rows else 0.0,
        "eval_rows": len(rows),
        "perplexity": float(np.exp(total_nll / total_tokens)) if total_tokens else float("nan"),
        "tokens_per_s": statistics.median(speeds),
        "samples": [{"id": r.get("id"), "gold": r["answer"], "reply": t[:300], "correct": c}
                    for r, t, c in list(zip(rows, replies, correct))[:3]],
    }
