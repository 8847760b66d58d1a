"""On-policy distillation through a served teacher (objective `on_policy`).

Each step the student samples completions for the step's training prompts; the teacher's own
OpenAI-compatible endpoint scores exactly those tokens (`/v1/completions` with the teacher's
prompt followed by the student's completion, `echo: true`, `logprobs: k`, `max_tokens: 1`: the
legacy completions API, which llama.cpp's server and `vllm serve` answer with the prompt's own
logprobs); the student then minimises reverse KL to the teacher on its own samples
(losses.topk_reverse_kl), optionally mixed with cross-entropy on the curated rationales (cot).
This is GKD (Agarwal et al. 2024) with only on-policy data, and what Thinking Machines call
on-policy distillation; TRL's stable trainer dropped the served-teacher path.

The prompt goes as text: llama-cpp-python 0.3.36 fails on a token-id prompt with echo (it
concatenates the list to a string). The endpoint re-tokenizes it, so every sample is checked: the
echoed tokens must be exactly the student's sampled tokens (same vocabulary, and a sample the
student spelled the way the tokenizer does); one that is not is left out and counted.
Costs are counted in `teacher_tokens` (what the endpoint reported as prompt tokens), the number
an accuracy-per-teacher-token comparison needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import torch

from flows.train.examples import Example
from flows.train.losses import IGNORE


class ScoringError(RuntimeError):
    """The teacher endpoint cannot score the student's tokens; says why."""


@dataclass
class Sample:
    """A student completion three ways: its token ids, each token's text, and its text."""

    ids: list[int]
    texts: list[str]
    text: str


class CompletionsScorer:
    """The teacher's top-k logprobs at every token of a token sequence, from /v1/completions."""

    def __init__(self, base_url: str, model: str, api_key: str, k: int, timeout: float = 300.0):
        self.url = base_url.rstrip("/") + "/completions"
        self.model, self.k = model, k
        self.client = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {api_key}"})
        self.prompt_tokens = self.requests = 0

    def score(self, prompt: str, sample: Sample) -> list | None:
        """The teacher's alternatives [(text, logprob)], best first (the actual token among
        them), at each token of the sample; None when the echoed tokens are not the sample's
        (a token that is part of a character never lines up: the server echoes it as "")."""
        texts = sample.texts
        response = self.client.post(self.url, json={
            "model": self.model, "prompt": prompt + sample.text, "echo": True,
            "logprobs": self.k, "max_tokens": 1, "temperature": 0.0})
        if response.status_code != 200:
            raise ScoringError(f"teacher endpoint {self.url}: HTTP {response.status_code}: "
                               f"{response.text[:300]}")
        body = response.json()
        self.requests += 1
        lp = body["choices"][0].get("logprobs") or {}
        tokens, tops = lp.get("tokens") or [], lp.get("top_logprobs") or []
        self.prompt_tokens += (body.get("usage") or {}).get("prompt_tokens") or len(tokens)
        if len(tokens) < len(texts):
            raise ScoringError(f"teacher endpoint {self.url} echoed {len(tokens)} token "
                               "logprobs: it does not return prompt logprobs (echo)")
        entries = align(tokens, tops, texts)
        return None if entries is None else [
            sorted(((t, float(v)) for t, v in (top or {}).items()), key=lambda a: -a[1])
            for top in entries]

    def close(self) -> None:
        self.client.close()


class GGUFScorer:
    """The same answer as CompletionsScorer, computed in-process by llama.cpp on the GGUF file
    the `llamacpp` backend serves (student.on_policy_scorer: in_process).

    Why it exists: llama-cpp-python 0.3.36's server computes echo logprobs in Python, a sort of
    the whole 49k vocabulary per echoed token. Measured on the loaded 2-core machine: 536 echoed
    tokens took 486 s, evaluating them 66 s. Here the top k come from numpy's argpartition, and
    the worked-examples prefix shared by consecutive requests stays in the KV cache."""

    def __init__(self, path, k: int, n_ctx: int = 2048, threads: int | None = None):
        from flows.llama_cpu import open_llama
        from flows.settings import cpu_threads

        threads = threads or cpu_threads()
        self.llm = open_llama(path, logits_all=True, n_ctx=n_ctx, n_threads=threads,
                              n_threads_batch=threads, verbose=False)
        self.k = k
        self.prompt_tokens = self.requests = 0

    def score(self, prompt: str, sample: Sample) -> list:
        """As CompletionsScorer.score; the sample goes in as the student's own token ids, so
        there is nothing to line up."""
        import numpy as np

        from flows.evaluate.engines import log_softmax

        llm = self.llm
        completion = sample.ids
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True) + completion
        if len(ids) >= llm.n_ctx():
            raise ScoringError(f"{len(ids)} tokens do not fit the scorer's {llm.n_ctx()}")
        # Keep the KV cache of the prefix this text shares with the last one; evaluate the rest.
        same = 0
        for a, b in zip(llm.input_ids[:llm.n_tokens].tolist(), ids[:-1]):
            if a != b:
                break
            same += 1
        llm.n_tokens = same
        llm.eval(ids[same:])
        self.requests += 1
        self.prompt_tokens += len(ids)
        n = len(completion)
        # Row t of the scores is the distribution of token t + 1.
        rows = log_softmax(np.asarray(llm.scores[len(ids) - n - 1:len(ids) - 1],
                                      dtype=np.float64))
        out = []
        for row, actual in zip(rows, completion):
            best = np.argpartition(-row, self.k)[:self.k]
            alts = {int(i): float(row[i]) for i in best} | {actual: float(row[actual])}
            out.append(sorted(((self._text(i), lp) for i, lp in alts.items()),
                              key=lambda a: -a[1]))
        return out

    def _text(self, token: int) -> str:
        return self.llm.detokenize([token]).decode("utf-8", errors="ignore")

    def close(self) -> None:
        self.llm.close()


def align(tokens: list[str], tops: list, texts: list[str]) -> list | None:
    """The teacher's entries for the student's n completion tokens: the echo ends with them, or
    with them and the one token the endpoint generated (max_tokens 1; none when it chose to
    stop). None when neither matches the student's token texts (another vocabulary)."""
    n = len(texts)
    for end in (len(tokens) - 1, len(tokens)):
        if end >= n and tokens[end - n:end] == texts:
            return tops[end - n:end]
    return None


class OnPolicy:
    """Makes the on-policy examples of a micro-batch: sample, score, align.

    `prompts`: each row's prompt as the student sees it (zero-shot); `teacher_prompts`: the same
    request as the teacher was asked it when it taught (with the template's worked examples when
    teacher.few_shot). The teacher scores the student's tokens in its own context: when teacher
    and student start from the same model (the quickstart), the worked examples are what the
    teacher knows and the student does not."""

    def __init__(self, tokenizer, scorer: CompletionsScorer, prompts: list[list[int]],
                 teacher_prompts: list[str], *, max_new_tokens: int, temperature: float,
                 k: int):
        self.tok, self.scorer = tokenizer, scorer
        self.prompts, self.teacher_prompts = prompts, teacher_prompts
        self.max_new_tokens, self.temperature, self.k = max_new_tokens, temperature, k
        self.samples = self.misaligned = 0

    @torch.no_grad()
    def sample(self, model, rows: list[int]) -> list[list[int]]:
        """The student's completions (token ids, end-of-turn dropped) for these rows' prompts."""
        tok = self.tok
        prompts = [self.prompts[i] for i in rows]
        width = max(map(len, prompts))
        pad = tok.pad_token_id
        # Left padding: every sequence continues right where its prompt ends.
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             do_sample=True, temperature=self.temperature, top_p=1.0, top_k=0,
                             max_new_tokens=self.max_new_tokens, pad_token_id=pad,
                             eos_token_id=tok.eos_token_id)
        model.train(was_training)
        completions = []
        for seq in out[:, width:].tolist():
            if tok.eos_token_id in seq:
                # The end-of-turn token is not scored: servers echo special tokens as "" and
                # their alternatives by text, so it cannot be aligned. The cot mix (or the base)
                # teaches stopping.
                seq = seq[:seq.index(tok.eos_token_id)]
            seq = [t for t in seq if t != pad]
            # Spelled the way the tokenizer spells its text, which is what the endpoint will
            # tokenize: a sampled "A", "nswer" becomes "Answer". Same text, same student.
            completions.append(tok(tok.decode(seq), add_special_tokens=False)["input_ids"])
        return completions

    def examples(self, model, rows: list[int]) -> list[Example]:
        out = []
        for row, completion in zip(rows, self.sample(model, rows)):
            self.samples += 1
            if not completion:
                continue
            prompt = self.prompts[row]
            sample = Sample(completion, [self.tok.decode([t]) for t in completion],
                            self.tok.decode(completion))
            entries = self.scorer.score(self.teacher_prompts[row], sample)
            if entries is None:
                self.misaligned += 1
                continue
            top_ids, top_lps = [], []
            for alts in entries:
                ids = [(self._one_id(text), lp) for text, lp in alts]
                ids = [(i, lp) for i, lp in ids if i is not None][:self.k + 1]
                ids += [(-1, 0.0)] * (self.k + 1 - len(ids))
                top_ids.append([i for i, _ in ids])
                top_lps.append([lp for _, lp in ids])
            none = [[-1] * (self.k + 1) for _ in prompt]
            out.append(Example(prompt + completion, [IGNORE] * len(prompt) + completion,
                               row_id=str(row), topk_ids=none + top_ids,
                               topk_logprobs=[[0.0] * (self.k + 1) for _ in prompt] + top_lps))
        if self.samples >= 8 and self.misaligned > self.samples // 2:
            raise ScoringError(f"{self.misaligned} of {self.samples} student samples could not "
                               "be aligned with the teacher's echoed tokens: teacher and student "
                               "do not share a vocabulary")
        return out

    def _one_id(self, text: str) -> int | None:
        ids = self.tok(text, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None
