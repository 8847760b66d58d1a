"""Decode throughput of a GGUF model on this machine's cores: one sequence at a time (what every
llama.cpp call in stairs does today) against W sequences decoded together in one llama_decode per
step (llama.cpp's batched path, the ceiling of any batched engine on these cores), at
W = 1, 2, 4, 8, 16, side by side in one process, medians of --repeats.

    PYTHONPATH=. python bench/embedded_throughput.py                   # the embedded 135M teacher
    PYTHONPATH=. python bench/embedded_throughput.py --gguf FILE.gguf  # e.g. a student's Q8_0
    STAIRS_THREADS=2 PYTHONPATH=. python bench/embedded_throughput.py --tokens 32 --repeats 1

Each width decodes --tokens greedy tokens after its own short prompt, for W different prompts;
end-of-sequence is banned so every width does the same work per sequence. Prefill (the prompts)
is timed apart from decoding. "one at a time" decodes the same W prompts one after another
through the same low-level calls, so the only difference is the batch; `greedy identical` says
whether both paths produced the same tokens for every sequence, and whether the batched texts
are create_completion's. Each sequence has its own KV stream (kv_unified off): with one cache
shared by all sequences, 12 of 16 sequences' greedy tokens differed from one-at-a-time decoding
within 6-46 tokens on the embedded model (attention over a shared, masked cache sums in another
order), and none did with a stream each. Each prompt is prefilled alone (several prompts in one
call moved their logits), as flows/evaluate/batched.py does; only decode steps are batched.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from pathlib import Path

import llama_cpp as lc
import numpy as np
from llama_cpp import Llama

from flows.embedded import embedded_gguf
from flows.llama_cpu import guard
from flows.settings import cpu_threads

guard()  # llama.cpp's AMX kernels crash on some CPUs (flows/llama_cpu.py)

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle stays upright.",
    "List some facts about the moon.",
    "Describe a busy market in the morning.",
    "What makes bread rise? Explain step by step.",
    "Tell me about the history of paper.",
    "How do bees make honey?",
    "Describe the water cycle to a child.",
]


def prompt_text(i: int) -> str:
    """Sequence i's prompt, the same in every path (their texts are compared); past the list,
    trailing spaces keep prompts distinct."""
    return PROMPTS[i % len(PROMPTS)] + " " * (i // len(PROMPTS))


@lc.llama_log_callback
def _quiet(level, text, user_data) -> None:
    """llama.cpp's load and context logs would bury the table."""


class Model:
    """One llama.cpp model and a context with room for `width` sequences of `n_ctx_seq`."""

    def __init__(self, path: Path, width: int, n_ctx_seq: int, threads: int,
                 flash_attn: bool = False):
        mparams = lc.llama_model_default_params()
        self.model = lc.llama_model_load_from_file(str(path).encode(), mparams)
        if not self.model:
            raise SystemExit(f"{path}: llama.cpp cannot load it")
        cparams = lc.llama_context_default_params()
        cparams.n_ctx = width * n_ctx_seq
        cparams.n_batch = cparams.n_ubatch = max(512, width * 64)
        cparams.n_seq_max = width
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.kv_unified = False  # a KV stream per sequence: attention sees only its own
        cparams.no_perf = True
        # Set like the Llama it is compared with (llama-cpp-python's default: off); llama.cpp's
        # own default (auto) turns it on here, and its sums differ enough to flip near-ties.
        cparams.flash_attn_type = (lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                                   else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self.ctx = lc.llama_init_from_model(self.model, cparams)
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.eos = lc.llama_vocab_eos(self.vocab)
        self.batch = lc.llama_batch_init(cparams.n_batch, 0, width)

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode()
        out = (lc.llama_token * (len(raw) + 8))()
        n = lc.llama_tokenize(self.vocab, raw, len(raw), out, len(out), True, False)
        return list(out[:n])

    def clear(self) -> None:
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)

    def decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """items: (token, position, sequence id, wants logits)."""
        b = self.batch
        for i, (tok, pos, seq, logits) in enumerate(items):
            b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos, 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits
        b.n_tokens = len(items)
        if lc.llama_decode(self.ctx, b) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(self, i: int) -> int:
        """The greedy next token after the batch's i-th token (which asked for logits)."""
        ptr = lc.llama_get_logits_ith(self.ctx, i)
        logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)),
                                       shape=(self.n_vocab,))
        logits[self.eos] = -np.inf  # banned, as create_completion's logit_bias bans it below
        return int(logits.argmax())

    def close(self) -> None:
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)


def detok(m: Model, tokens: list[int]) -> str:
    out = b""
    buf = ctypes.create_string_buffer(64)
    for tok in tokens:
        n = lc.llama_token_to_piece(m.vocab, tok, buf, len(buf), 0, False)
        out += buf.raw[:n]
    return out.decode("utf-8", errors="replace")


def run(m: Model, prompts: list[list[int]], tokens: int, together: bool) -> dict:
    """Prefill and decode `prompts` (each its own sequence) together or one after another."""
    m.clear()
    groups = [list(range(len(prompts)))] if together else [[i] for i in range(len(prompts))]
    out: list[list[int]] = [[] for _ in prompts]
    prefill_s = decode_s = 0.0
    for group in groups:
        t0 = time.perf_counter()
        nxt = {}
        for seq in group:  # each prompt alone, as stairs' batched engine prefills them
            p = prompts[seq]
            m.decode([(tok, pos, seq, pos == len(p) - 1) for pos, tok in enumerate(p)])
            nxt[seq] = m.argmax(len(p) - 1)
        t1 = time.perf_counter()
        for step in range(tokens):
            for seq in group:
                out[seq].append(nxt[seq])
            if step == tokens - 1:
                break
            m.decode([(nxt[seq], len(prompts[seq]) + step, seq, True) for seq in group])
            nxt = {seq: m.argmax(k) for k, seq in enumerate(group)}
        t2 = time.perf_counter()
        prefill_s += t1 - t0
        decode_s += t2 - t1
    generated = tokens * len(prompts)
    return {"prefill_s": prefill_s, "decode_s": decode_s,
            "decode_tok_s": generated / decode_s, "tokens": out}


def run_today(llm: Llama, width: int, tokens: int, eos: int) -> tuple[float, list[str]]:
    """Today's path: llama-cpp-python's create_completion, one prompt after another (prompt
    processing included, as a caller of it pays it): tokens/s over the whole call, and texts."""
    t0 = time.perf_counter()
    n, texts = 0, []
    for i in range(width):
        out = llm.create_completion(prompt_text(i), max_tokens=tokens, temperature=0.0,
                                    logit_bias={eos: -1e9})  # same length as the others
        n += out["usage"]["completion_tokens"]
        texts.append(out["choices"][0]["text"])
    return n / (time.perf_counter() - t0), texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, help="a GGUF file (default: the embedded teacher)")
    ap.add_argument("--widths", default="1,2,4,8,16")
    ap.add_argument("--tokens", type=int, default=64, help="greedy tokens per sequence")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--flash-attn", action="store_true",
                    help="flash attention in every path (llama-cpp-python's default: off)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    path = args.gguf or embedded_gguf()
    threads = cpu_threads()
    lc.llama_backend_init()
    lc.llama_log_set(_quiet, ctypes.c_void_p(0))
    today = Llama(str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads,
                  flash_attn=args.flash_attn, verbose=False)
    eos = lc.llama_vocab_eos(lc.llama_model_get_vocab(today.model))
    results = []
    for width in [int(w) for w in args.widths.split(",")]:
        m = Model(path, width, 128 + args.tokens, threads, args.flash_attn)
        prompts = [m.tokenize(prompt_text(i)) for i in range(width)]
        for together in (False, True):  # warm-up: first-call allocations of both paths
            run(m, prompts, 4, together=together)
        alone, batched, high = [], [], []
        for _ in range(args.repeats):  # alternated, so drift hits every path alike
            high.append(run_today(today, width, args.tokens, eos))
            alone.append(run(m, prompts, args.tokens, together=False))
            batched.append(run(m, prompts, args.tokens, together=True))
        same_as_today = all([detok(m, seq) for seq in r["tokens"]] == texts
                            for r in batched for _, texts in high)
        m.close()
        a = statistics.median(r["decode_tok_s"] for r in alone)
        b = statistics.median(r["decode_tok_s"] for r in batched)
        t = statistics.median(speed for speed, _ in high)
        row = {"width": width, "today_tok_s": round(t, 1), "one_at_a_time_tok_s": round(a, 1),
               "batched_tok_s": round(b, 1), "speedup_vs_today": round(b / t, 2),
               "speedup": round(b / a, 2),
               "prefill_s_one_at_a_time": round(statistics.median(
                   r["prefill_s"] for r in alone), 3),
               "prefill_s_batched": round(statistics.median(r["prefill_s"] for r in batched), 3),
               "greedy_identical": all(x["tokens"] == y["tokens"]
                                       for x, y in zip(alone, batched)),
               "same_text_as_create_completion": same_as_today}
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"{path.name}, {threads} thread(s), {args.tokens} tokens per sequence, "
          f"medians of {args.repeats}, flash attention {'on' if args.flash_attn else 'off'}")
    print("| sequences | create_completion tok/s | one at a time tok/s | batched tok/s | "
          "batched vs create_completion | vs one at a time | greedy identical (to one at a "
          "time / to create_completion) |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['width']} | {r['today_tok_s']} | {r['one_at_a_time_tok_s']} | "
              f"{r['batched_tok_s']} | {r['speedup_vs_today']}x | {r['speedup']}x | "
              f"{'yes' if r['greedy_identical'] else 'no'} / "
              f"{'yes' if r['same_text_as_create_completion'] else 'no'} |")
    if args.json:
        args.json.write_text(json.dumps({"gguf": str(path), "threads": threads,
                                         "flash_attn": args.flash_attn,
                                         "tokens": args.tokens, "repeats": args.repeats,
                                         "results": results}, indent=2))


if __name__ == "__main__":
    main()
