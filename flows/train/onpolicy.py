"""On-policy distillation through a served teacher (objective `on_policy`).

Each step the student samples completions for the step's training prompts; the teacher's own
OpenAI-compatible endpoint scores exactly those tokens (`/v1/completions` with the prompt given as
token ids, `echo: true`, `logprobs: k`, `max_tokens: 1`: the legacy completions API that
llama.cpp's server, `vllm serve` and OpenAI-compatible proxies answer with the prompt's own
logprobs); the student then minimises reverse KL to the teacher on its own samples
(losses.topk_reverse_kl), optionally mixed with cross-entropy on the curated rationales (cot).
This is GKD (Agarwal et al. 2024) with only on-policy data, and what Thinking Machines call
on-policy distillation; TRL's stable trainer dropped the served-teacher path.

Token ids, not text, go to the teacher, so nothing is re-tokenized: teacher and student must
share the vocabulary (checked per sample: the teacher's echoed token texts must be the student's).
Costs are counted in `teacher_tokens` (what the endpoint reported as prompt tokens), the number
an accuracy-per-teacher-token comparison needs.
"""

from __future__ import annotations

import httpx
import torch

from flows.train.examples import Example
from flows.train.losses import IGNORE


class ScoringError(RuntimeError):
    """The teacher endpoint cannot score the student's tokens; says why."""


class CompletionsScorer:
    """The teacher's top-k logprobs at every token of a token sequence, from /v1/completions."""

    def __init__(self, base_url: str, model: str, api_key: str, k: int, timeout: float = 300.0):
        self.url = base_url.rstrip("/") + "/completions"
        self.model, self.k = model, k
        self.client = httpx.Client(timeout=timeout, headers={"Authorization": f"Bearer {api_key}"})
        self.prompt_tokens = self.requests = 0

    def score(self, ids: list[int], n: int) -> tuple[list[str], list[list[tuple[str, float]]]]:
        """The echoed token texts of `ids` and, per token, the teacher's alternatives
        [(text, logprob)] best first (the actual token among them); at least the last n."""
        response = self.client.post(self.url, json={
            "model": self.model, "prompt": ids, "echo": True, "logprobs": self.k,
            "max_tokens": 1, "temperature": 0.0})
        if response.status_code != 200:
            raise ScoringError(f"teacher endpoint {self.url}: HTTP {response.status_code}: "
                               f"{response.text[:300]}")
        body = response.json()
        self.requests += 1
        self.prompt_tokens += (body.get("usage") or {}).get("prompt_tokens") or len(ids)
        lp = body["choices"][0].get("logprobs") or {}
        tokens, tops = lp.get("tokens") or [], lp.get("top_logprobs") or []
        if len(tokens) < n:
            raise ScoringError(f"teacher endpoint {self.url} echoed {len(tokens)} token "
                               f"logprobs for a {len(ids)}-token prompt: it does not return "
                               "prompt logprobs (echo)")
        return tokens, [sorted(((t, float(v)) for t, v in (top or {}).items()),
                               key=lambda a: -a[1]) for top in tops]

    def close(self) -> None:
        self.client.close()


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
                 teacher_prompts: list[list[int]], *, max_new_tokens: int, temperature: float,
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
            completions.append([t for t in seq if t != pad])
        return completions

    def examples(self, model, rows: list[int]) -> list[Example]:
        out = []
        for row, completion in zip(rows, self.sample(model, rows)):
            self.samples += 1
            if not completion:
                continue
            prompt = self.prompts[row]
            texts = [self.tok.decode([t]) for t in completion]
            tokens, tops = self.scorer.score(self.teacher_prompts[row] + completion,
                                             len(completion))
            entries = align(tokens, tops, texts)
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
