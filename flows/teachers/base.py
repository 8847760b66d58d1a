"""The one interface every teacher backend speaks.

A backend takes `Request`s (rendered chat messages plus sampling settings for one sample) and
yields lists of `(request, Reply)` pairs as answers arrive (everything that arrived together, in
any order). Per-request failures are Replies
with `error` set ("request_failed: ..."), never exceptions; only a teacher that cannot be
reached at all raises `TeacherUnreachable`, so one bad prompt never sinks a run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, AsyncIterator, Iterable, Protocol

import orjson


class TeacherUnreachable(RuntimeError):
    """The teacher cannot be reached (at start, or it died midway); the message says where."""


@dataclass(frozen=True)
class Sampling:
    """Everything that changes what the teacher answers (so all of it is in the cache key)."""

    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    top_logprobs: int = 0
    json_schema: dict | None = None

    def for_sample(self, index: int) -> "Sampling":
        # Distinct seeds make the n samples of one prompt differ, yet stay reproducible.
        seed = None if self.seed is None else self.seed + index
        return Sampling(self.temperature, self.top_p, self.max_tokens, seed, self.top_logprobs,
                        self.json_schema)

    def as_dict(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p,
                "max_tokens": self.max_tokens, "seed": self.seed,
                "top_logprobs": self.top_logprobs, "json_schema": self.json_schema}

    @cached_property
    def as_json(self) -> str:
        """The generated rows' `sampling` column: serialized once per Sampling object (plan()
        shares one per sample index), not once per answer."""
        return json.dumps(self.as_dict(), sort_keys=True)


@dataclass
class Request:
    key: str  # the cache key (request_hash): see request_key()
    messages: list[dict]
    sampling: Sampling
    sample_index: int
    tag: Any = None  # the caller's handle (the corpus row); backends pass it through
    messages_json: str | None = None  # messages_json(messages), when the caller has it


@dataclass
class Reply:
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list | None = None  # token_logprob() entries, one per generated token
    error: str | None = None  # None, or "request_failed: why"
    # A failure that outlived its retries (429s, 5xx, timeouts): not written as a row and not
    # cached, so the next run of the stage sends it again. Permanent failures (a 400) are rows.
    transient: bool = False
    cached: bool = False

    def to_json(self) -> str:
        fields = {"text": self.text, "finish_reason": self.finish_reason,
                  "prompt_tokens": self.prompt_tokens,
                  "completion_tokens": self.completion_tokens, "logprobs": self.logprobs}
        try:
            # orjson: 0.3 against 2.1 us per reply, once per answer in the request loop. Its
            # JSON reads back the same through json.loads (UTF-8 instead of \u escapes).
            return orjson.dumps(fields).decode()
        except (TypeError, orjson.JSONEncodeError):  # what only json writes (a lone surrogate)
            return json.dumps(fields)

    @classmethod
    def from_json(cls, blob: str) -> "Reply":
        return cls(**json.loads(blob), cached=True)


def token_logprob(token: str, logprob: float, top, k: int) -> dict:
    """The one logprob layout every backend stores (the generated `logprobs` column, the
    response cache) and the trainer reads: {"token": text, "logprob": its logprob, "top":
    [[text, logprob], ...]} with at most k alternatives, best first, each text once.

    Backends differ in what they return: the OpenAI API exactly k alternatives, llama.cpp's
    server k plus the sampled token (and fewer when two tokens decode to the same text), vLLM k
    plus the sampled token; normalising here means the trainer sees one shape."""
    seen, best = set(), []
    for text, lp in sorted(((t, float(v)) for t, v in top), key=lambda a: -a[1]):
        if text not in seen:
            seen.add(text)
            best.append([text, lp])
    return {"token": token, "logprob": float(logprob), "top": best[:k]}


@dataclass
class Usage:
    """Counters a backend keeps while it runs (the generate summary reports them)."""

    requests: int = 0  # requests that reached the wire (first tries)
    retries: int = 0
    errors: dict = field(default_factory=dict)  # transient error kind -> count
    concurrency_min: int | None = None
    concurrency_final: int | None = None
    replicas: dict = field(default_factory=dict)  # replica URL -> {"sent", "failures"}
    # Prompt tokens an in-process llama.cpp teacher copied from the sample before instead of
    # evaluating them again (flows/evaluate/batched.py, BatchedDecoder._first_token).
    prompt_tokens_copied: int = 0


def messages_json(messages: list[dict]) -> str:
    """The messages as the cache key serializes them. plan() calls it once per corpus row: the key
    of every sample and the generated rows' `messages` column share the one string."""
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def request_key(identity: str, messages: list[dict], sampling: Sampling, sample_index: int, *,
                encoded_messages: str | None = None) -> str:
    """sha256 of what determines the answer: backend and model identity, the rendered messages,
    sampling settings (seed included) and sample index. Never an endpoint's key or limits.

    The blob is json.dumps({"teacher", "messages", "sampling", "sample"}, sort_keys=True,
    ensure_ascii=False), byte for byte (every stored cache is keyed by it), assembled from its
    parts so that messages already serialized by messages_json() are not serialized again."""
    if encoded_messages is None:
        encoded_messages = messages_json(messages)
    sampling_json = json.dumps(sampling.as_dict(), sort_keys=True, ensure_ascii=False)
    blob = (f'{{"messages": {encoded_messages}, "sample": {json.dumps(sample_index)}, '
            f'"sampling": {sampling_json}, "teacher": {json.dumps(identity, ensure_ascii=False)}}}')
    return hashlib.sha256(blob.encode()).hexdigest()


class Teacher(Protocol):
    name: str  # "backend:model", shown to people and stored in rows
    identity: str  # what the cache key uses: stable across runs and ports
    usage: Usage

    def start(self) -> None:
        """Acquire resources (start a server, load a model) and check the teacher answers;
        raise TeacherUnreachable with a clear message when it does not."""

    def close(self) -> None:
        """Release everything start() took. Safe to call twice and after a failed start."""

    def stream(self, requests: Iterable[Request], *, stop=None
               ) -> AsyncIterator[list[tuple[Request, Reply]]]:
        """Answer the requests, yielding batches of answers as they arrive. `stop()` returning True means: send
        nothing new (budget reached); requests already in flight still finish."""
