"""Decoding of many chat prompts at once on one llama.cpp model: up to `width` sequences share
every llama_decode call (continuous batching: a finished sequence's slot takes the next prompt at
once), and each returns the text and token count that llama-cpp-python's create_chat_completion
(or its server) returns for it alone: greedy, or sampled with a seed through the same sampler
chain (sampler_chain).

Why our own loop: llama-cpp-python's high-level calls decode one sequence at a time, and its
server answers one request at a time. A small model decoding one token is bound by reading its
weights, so W sequences per step cost little more than one (bench/embedded_throughput.py:
1.5-1.9x at 4-16 sequences on 2 cores). The low-level llama_batch / llama_decode calls are
llama-cpp-python's own bindings.

Identical tokens need four things, each found by probing logits on the embedded teacher
(docs/benchmarks.md): each sequence its own KV stream (`kv_unified` off; with one shared cache
greedy tokens diverged within tens of tokens); each prompt prefilled alone (see _prefill); both
paths evaluating a prompt in the same pieces (see prompt_tokens); and flash attention off, as
in llama-cpp-python's Llama. With it on, a sequence decoded beside others past 256 cached
tokens moved its logits by up to 1.05 against decoding it alone on 2 threads (not on one: the
kernel splits a lone query's cache across threads); with it off, decode steps of 2 to 8
sequences gave the same logits, bit for bit, as one on the embedded teacher. Not on every file
and CPU: the matrix products of one row and of several rows are different kernels, so
exact_width probes each file when it is opened, and GGUFEngine decodes no more sequences per
step than give the logits of a step alone.
"""

from __future__ import annotations

import ctypes
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import jinja2
import llama_cpp as lc
import numpy as np

# Prompt tokens per llama_decode call: Llama.eval's n_batch (and n_ubatch), so a prompt is
# evaluated in the same chunks as create_completion evaluates it.
CHUNK = 512


@dataclass
class _Sequence:
    """One prompt being answered in a slot (its sequence id)."""

    index: int
    prompt: list[int]
    shared: int  # leading prompt tokens that come from the shared-prefix stream
    max_tokens: int
    stop: list[bytes]
    tokens: list[int] = field(default_factory=list)
    multibyte_fix: int = 0
    text: bytes | None = None  # set when finished
    finish_reason: str = "stop"  # "length" when max_tokens or the context window ended it
    tag: Any = None  # the caller's handle (a teacher's Request)
    sampler: Any = None  # a seeded sampler chain (sampler_chain); None: greedy
    # The caller's word that the next sequence asks the same prompt (another sample of it):
    # keep this one's evaluated prompt for it (BatchedDecoder._first_token).
    keep_prompt: bool = False

    @property
    def position(self) -> int:
        return len(self.prompt) + len(self.tokens)

    @property
    def reply(self) -> str:
        return self.text.decode("utf-8", errors="ignore")


# general.file_type of files with float weights (llama.cpp's LLAMA_FTYPE_ALL_F32, _MOSTLY_F16,
# _MOSTLY_BF16): decoded one at a time, without a probe. Their several-row matrix products take
# another kernel than one row, whose difference shows on some inputs only: a tiny F16 file gave
# another reply beside others for 1 of 11 conversations where exact_width passed 2 rows at once,
# and the quickstart's F32 student failed the probe at 2.
FLOAT_FILE_TYPES = {"0", "1", "32"}


def has_float_weights(llm) -> bool:
    return str(llm.metadata.get("general.file_type")) in FLOAT_FILE_TYPES


# What BatchedDecoder.exact_width evaluates to probe a file (probe_prompts).
PROBE_TEXT = ("Vorla has 3 red lanterns and 5 blue lanterns. Kazen has 7 green marbles and 2 "
              "white marbles. How many lanterns does Vorla have in total?")


def probe_prompts(llm, n: int) -> list[list[int]]:
    """n token lists for exact_width, each its own text and length: PROBE_TEXT's words turned
    by i places, the last i % 5 dropped (about 20 tokens each)."""
    words = PROBE_TEXT.split()
    out = []
    for i in range(n):
        turned = words[i % len(words):] + words[:i % len(words)]
        text = " ".join(turned[:len(turned) - i % 5])
        out.append(llm.tokenize(text.encode(), add_bos=True, special=False))
    return out


# llama-cpp-python's server defaults for what stairs does not send (server/types.py); stairs
# sends temperature, top_p, seed and repeat_penalty 1.0 (flows/teachers/llamacpp.py).
SERVER_TOP_K, SERVER_MIN_P, SERVER_TYPICAL_P, PENALTY_LAST_N = 40, 0.05, 1.0, 64


def sampler_chain(n_vocab: int, temperature: float, top_p: float, seed: int):
    """The sampler Llama._init_sampler builds for a sampled request to llama-cpp-python's server
    with stairs' parameters, in its order: penalties (neutral at repeat_penalty 1.0), top-k,
    typical, top-p, min-p, temperature, then a draw from the request's seed. A sequence's
    logits are bit for bit those it gets alone, so with its own chain its sampled reply is
    create_chat_completion's with the prompt evaluated in the same pieces (the server's, unless
    the request before it had the same prompt: docs/teachers.md)."""
    from llama_cpp._internals import LlamaSampler

    chain = LlamaSampler()
    chain.add_penalties(n_vocab, PENALTY_LAST_N, 1.0, 0.0, 0.0)
    chain.add_top_k(SERVER_TOP_K)
    chain.add_typical(SERVER_TYPICAL_P, 1)
    chain.add_top_p(top_p, 1)
    chain.add_min_p(SERVER_MIN_P, 1)
    chain.add_temp(temperature)
    chain.add_dist(seed)
    return chain


def chat_formatter(llm):
    """The formatter create_chat_completion uses for `llm` when it is the GGUF's own chat
    template (llama-cpp-python builds it the same way), or None for a named chat format."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    if llm.chat_format != "chat_template.default" or llm.chat_handler is not None:
        return None
    vocab = lc.llama_model_get_vocab(llm.model)

    def text(token: int) -> str:
        return lc.llama_vocab_get_text(vocab, token).decode() if token != -1 else ""

    eos, bos = llm.token_eos(), llm.token_bos()
    return Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                               eos_token=text(eos), bos_token=text(bos), stop_token_ids=[eos])


def prompt_tokens(llm, formatter, messages: list[dict]) -> tuple[list[int], int, list[bytes]]:
    """The prompt's tokens and stop strings, as create_chat_completion builds them, and how many
    leading tokens it shares with the conversation before its last message (the system prompt
    and a template's worked examples: the same for every row). Both decoding paths evaluate
    those shared tokens first and the rest after them, so both evaluate a prompt in the same
    pieces (how a prompt is split changes some greedy replies) and its reply does not depend
    on which prompt came before it."""

    def tokens(messages):
        result = formatter(messages=messages)
        ids = llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special,
                           special=True)
        stop = result.stop if isinstance(result.stop, list) else [result.stop]
        return ids, [s.encode("utf-8") for s in stop if s]

    ids, stop = tokens(messages)
    try:
        before, _ = tokens(messages[:-1])
    except (jinja2.TemplateError, ValueError):  # a template that needs a message (messages[0])
        before = []
    shared = 0
    for a, b in zip(ids, before):
        if a != b:
            break
        shared += 1
    return ids, min(shared, len(ids) - 1), stop


class BatchedDecoder:
    """A second llama.cpp context on `llm`'s already loaded weights, with `width` KV streams of
    `llm`'s context size each; `formatter` is chat_formatter(llm)."""

    def __init__(self, llm, formatter, width: int, threads: int):
        self.llm = llm
        self.formatter = formatter
        self.width = width
        self.n_ctx_seq = llm.n_ctx()
        params = lc.llama_context_default_params()
        # One KV stream per slot, one holding the shared prefix (prefix_stream) and one a
        # whole prompt kept for its next sample (prompt_stream; 47 MB for the embedded
        # teacher's 2,048 tokens).
        params.n_ctx = (width + 2) * self.n_ctx_seq
        params.n_seq_max = width + 2
        params.kv_unified = False
        params.n_batch = params.n_ubatch = CHUNK  # Llama's defaults
        params.n_threads = params.n_threads_batch = threads
        params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as in Llama; see above
        params.no_perf = True
        self.ctx = lc.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not open a {width}-sequence context")
        self.memory = lc.llama_get_memory(self.ctx)
        self.vocab = lc.llama_model_get_vocab(llm.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.batch = lc.llama_batch_init(params.n_batch, 0, 1)
        self.prefix_stream = width
        self.prefix: list[int] = []  # the tokens the prefix stream holds
        self.prompt_stream = width + 1
        self.kept: tuple[list[int], np.ndarray] | None = None  # its prompt, last-token logits
        self.prompt_tokens_copied = 0  # of prompts not evaluated again
        self._candidates = None  # a token array for draws from kept logits (_draw)

    def exact_width(self, prompts: list[list[int]]) -> int:
        """The most sequences per decode step, up to `width`, that give every one of them the
        logits of its step alone, bit for bit. That depends on the file's tensor types and on
        the CPU's kernels: llama.cpp multiplies one row and several rows with different code
        (a tiny F16 file: some rows of a step moved; the 1.5B Qwen Q4_K_M on an AVX2 CPU:
        every step of 4 or more; docs/benchmarks.md), and a reply decoded beside others would
        then differ from its reply alone and depend on which rows shared its steps.

        The probe: one prompt per slot (probe_prompts: different texts and lengths, as real
        rows are; the same text at shifted positions hid the F16 file's difference), all
        evaluated together up to their last tokens (how does not matter: both sides of the
        comparison start from the same cache, and one call is one pass over the weights);
        each slot's step alone, feeding its last token, then one step of the first k slots
        for k = 2 .. width. A probe, not a proof: kernels that differ only on inputs it does
        not try go unseen."""
        prompts = prompts[:self.width]
        ends = [len(p) - 1 for p in prompts]
        items = [(tok, pos, slot, False) for slot, p in enumerate(prompts)
                 for pos, tok in enumerate(p[:-1])]
        for c in range(0, len(items), CHUNK):
            self._decode(items[c:c + CHUNK])

        def step(slots: range) -> list[np.ndarray]:
            asked = self._decode([(prompts[s][-1], ends[s], s, True) for s in slots])
            logits = [self._logits(i).copy() for i in asked]
            for s in slots:  # back to where it stood, for the next probe
                lc.llama_memory_seq_rm(self.memory, s, ends[s], -1)
            return logits

        alone = [step(range(s, s + 1))[0] for s in range(self.width)]
        exact = 1
        for k in range(2, self.width + 1):
            if not all(np.array_equal(a, b) for a, b in zip(step(range(k)), alone)):
                break
            exact = k
        for slot in range(self.width):
            lc.llama_memory_seq_rm(self.memory, slot, -1, -1)
        return exact

    def generate(self, conversations: list[list[dict]],
                 max_new_tokens: int) -> tuple[list[str], list[int]]:
        """Each conversation's greedy reply text and completion-token count."""
        pending = deque(self.sequence(i, messages, max_new_tokens)
                        for i, messages in enumerate(conversations))
        done = sorted(self.replies(lambda: pending.popleft() if pending else None),
                      key=lambda s: s.index)
        return [s.reply for s in done], [len(s.tokens) for s in done]

    def sequence(self, index: int, messages: list[dict], max_new_tokens: int, *,
                 temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None) -> _Sequence:
        """A conversation ready to take a slot, greedy at temperature 0, else sampled from
        `seed`; ValueError when its prompt does not fit (or a sampled one has no seed)."""
        prompt, shared, stop = prompt_tokens(self.llm, self.formatter, messages)
        if len(prompt) >= self.n_ctx_seq:
            raise ValueError(f"conversation {index}: its prompt is {len(prompt)} tokens, more "
                             f"than the context window of {self.n_ctx_seq}")
        if temperature > 0 and seed is None:
            # The server draws an unrecorded seed then: no reply to reproduce.
            raise ValueError(f"conversation {index}: sampled (temperature {temperature}) "
                             "without a seed")
        # create_completion's clamp: the reply fits the context window.
        room = (max_new_tokens if max_new_tokens + len(prompt) < self.n_ctx_seq
                else self.n_ctx_seq - len(prompt))
        chain = (sampler_chain(self.n_vocab, temperature, top_p, seed) if temperature > 0
                 else None)
        return _Sequence(index, prompt, shared, room, stop, sampler=chain)

    def replies(self, take: Callable[[], _Sequence | None],
                closing: Callable[[], bool] | None = None) -> Iterator[_Sequence]:
        """Finished sequences, as each finishes. `take()` hands the next sequence to a free slot
        (None: nothing more), so a caller can decide at each admission whether to go on.
        `closing()` True: stop at the next step, dropping what is in the slots."""
        slots: dict[int, _Sequence] = {}
        next_token: dict[int, int] = {}
        more = True
        try:
            while True:
                while more and len(slots) < self.width:
                    seq = take()
                    if seq is None:
                        more = False
                        break
                    slot = min(set(range(self.width)) - set(slots))
                    slots[slot] = seq
                    next_token[slot] = self._first_token(slot, seq)
                if not slots or (closing is not None and closing()):
                    return
                # Sample results first, then feed the tokens of those still going in one decode.
                going = []
                for slot in sorted(slots):
                    seq = slots[slot]
                    if self._step(seq, next_token.pop(slot)):
                        going.append(slot)
                    else:
                        del slots[slot]
                        self._release(slot, seq)
                        yield seq
                if going:
                    self._decode([(slots[s].tokens[-1], slots[s].position - 1, s, True)
                                  for s in going])
                    next_token.update({s: self._pick(slots[s], k) for k, s in enumerate(going)})
        finally:
            for slot, seq in slots.items():  # stopped early: the next call starts from empty
                self._release(slot, seq)

    def _release(self, slot: int, seq: _Sequence) -> None:
        lc.llama_memory_seq_rm(self.memory, slot, -1, -1)
        if seq.sampler is not None:
            seq.sampler.close()
            seq.sampler = None

    def _first_token(self, slot: int, seq: _Sequence) -> int:
        """Evaluate the prompt in its slot and pick the first token. The samples of one prompt
        arrive one after another (flows/generate/flow.py plan), and each evaluated it again:
        a 600-token DROP prompt costs the 1.5B teacher seconds, its 4 samples four times that.
        Now a sequence marked keep_prompt leaves its evaluated prompt in the prompt stream with
        its last-token logits, and the next sequence with the same prompt copies the stream
        (bit for bit) and draws from those logits: the same reply as evaluating it again."""
        if self.kept is not None and seq.prompt == self.kept[0]:
            lc.llama_memory_seq_cp(self.memory, self.prompt_stream, slot, -1, -1)
            self.prompt_tokens_copied += len(seq.prompt)
            return self._draw(seq, self.kept[1])
        i = self._prefill(slot, seq)
        if not seq.keep_prompt:
            return self._pick(seq, i)
        logits = self._logits(i).copy()  # the next decode overwrites the context's logits
        # The slot holds exactly the prompt now (its cells as a prefill alone leaves them);
        # copies between streams apply at the next llama_decode, in the order asked.
        lc.llama_memory_seq_rm(self.memory, self.prompt_stream, -1, -1)
        lc.llama_memory_seq_cp(self.memory, slot, self.prompt_stream, -1, -1)
        self.kept = (seq.prompt, logits)
        return self._draw(seq, logits)

    def _draw(self, seq: _Sequence, logits: np.ndarray) -> int:
        """_pick from kept logits: the most likely token, or what llama_sampler_sample draws
        with the sequence's chain (it applies the chain to every token's logit, takes the
        selected one and accepts it into the chain)."""
        if seq.sampler is None:
            return int(logits.argmax())
        from llama_cpp._internals import LlamaTokenDataArray

        if self._candidates is None:
            self._candidates = LlamaTokenDataArray(n_vocab=self.n_vocab)
        cur = self._candidates
        cur.copy_logits(logits)
        cur.candidates.selected = -1
        lc.llama_sampler_apply(seq.sampler.sampler, ctypes.byref(cur.candidates))
        token = int(cur.candidates.data[cur.candidates.selected].id)
        lc.llama_sampler_accept(seq.sampler.sampler, token)
        return token

    def _prefill(self, slot: int, seq: _Sequence) -> int:
        """Evaluate a prompt in its slot; the batch index of its last logits. Its shared prefix
        is copied from the prefix stream (evaluated once, alone), the rest is evaluated alone
        from there, in Llama.eval's chunks. Alone because prompt-sized batches are not
        row-independent here: two prompts prefilled in one call moved a last-token logit by
        0.58 against either alone (decode steps are exact), so a reply would depend on which
        prompts arrived with it. The same split in every width keeps replies identical."""
        prefix = seq.prompt[:seq.shared]
        if prefix:
            if prefix != self.prefix:
                lc.llama_memory_seq_rm(self.memory, self.prefix_stream, -1, -1)
                self._evaluate(self.prefix_stream, prefix, 0)
                self.prefix = prefix
            # A copy between streams copies the whole stream, bit for bit (applied at the
            # next llama_decode).
            lc.llama_memory_seq_cp(self.memory, self.prefix_stream, slot, -1, -1)
        return self._evaluate(slot, seq.prompt[seq.shared:], seq.shared)

    def _evaluate(self, slot: int, tokens: list[int], start: int) -> int:
        """Feed tokens at positions start.. in CHUNK-sized calls; the last one's batch index."""
        for c in range(0, len(tokens), CHUNK):
            asked = self._decode([(tok, start + c + k, slot, c + k == len(tokens) - 1)
                                  for k, tok in enumerate(tokens[c:c + CHUNK])])
        return asked[-1]

    def _step(self, seq: _Sequence, token: int) -> bool:
        """Take the sampled token as create_completion does; False once the reply is finished
        (end-of-generation token, a stop string, or max tokens). Mirrors its quirks: a reply
        ending inside a multi-byte character is not checked for stops or length until the
        character completes."""
        if lc.llama_vocab_is_eog(self.vocab, token):
            seq.text = self.llm.detokenize(seq.tokens, prev_tokens=seq.prompt)
            return False
        seq.tokens.append(token)
        text = self.llm.detokenize(seq.tokens, prev_tokens=seq.prompt)
        for k, char in enumerate(text[-3:]):
            k = 3 - k
            for num, pattern in [(2, 192), (3, 224), (4, 240)]:
                if num > k and pattern & char == pattern:
                    seq.multibyte_fix = num - k
        if seq.multibyte_fix > 0:
            seq.multibyte_fix -= 1
            return self._has_room(seq, text)
        hits = [s for s in seq.stop if s in text]
        if hits:
            seq.text = text[: text.index(hits[0])]
            return False
        if len(seq.tokens) >= seq.max_tokens:
            seq.text, seq.finish_reason = text, "length"
            return False
        return self._has_room(seq, text)

    def _has_room(self, seq: _Sequence, text: bytes) -> bool:
        # A full KV stream ends the reply (create_completion's clamp keeps within it).
        if seq.position >= self.n_ctx_seq:
            seq.text, seq.finish_reason = text, "length"
            return False
        return True

    def _decode(self, items: list[tuple[int, int, int, bool]]) -> list[int]:
        """items: (token, position, sequence id, wants logits); the batch indices that asked."""
        b = self.batch
        asked = []
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
            if logits:
                asked.append(i)
        b.n_tokens = len(items)
        status = lc.llama_decode(self.ctx, b)
        if status != 0:
            raise RuntimeError(f"llama_decode failed ({status}) on {len(items)} tokens")
        return asked

    def _pick(self, seq: _Sequence, i: int) -> int:
        """The sequence's next token from the logits at batch index i: its sampler's draw
        (llama_sampler_sample also records the token in the chain, as create_completion's
        sampling does), or the most likely token."""
        if seq.sampler is not None:
            return lc.llama_sampler_sample(seq.sampler.sampler, self.ctx, i)
        return self._argmax(i)

    def _argmax(self, i: int) -> int:
        return int(self._logits(i).argmax())

    def _logits(self, i: int) -> np.ndarray:
        """A view of the context's logits at batch index i (valid until the next decode)."""
        ptr = lc.llama_get_logits_ith(self.ctx, i)
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self.n_vocab,))

    def close(self) -> None:
        if self.ctx:
            lc.llama_batch_free(self.batch)
            lc.llama_free(self.ctx)
            self.ctx = None
