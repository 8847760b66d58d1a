"""Wall time of scoring held-out rows with a GGUF file, the way stairs scores them (the
curriculum's template, greedy, flows/evaluate/score.py's chunks of 32 rows): GGUFEngine's
batched decoding at several widths against llama-cpp-python's create_chat_completion one row at
a time, both as stairs called it before batching (each call reusing whatever prefix the previous
row left cached) and as GGUFEngine(width=1) calls it now (the prefix every row shares evaluated
first). Zero-shot (how students are scored) and with the template's worked examples (how a base
teacher is scored), side by side in one process, alternated, medians of --repeats; `identical`
says whether every reply equals width 1's, text for text. A `batched W` path decodes as many rows
a step as the file's probe passes (BatchedDecoder.exact_width, at most W; the table names it);
`--unprobed` adds `unprobed W` paths that decode W rows a step regardless, as stairs did before
the probe, to show what exactness costs.

    PYTHONPATH=. python bench/gguf_eval_speed.py                    # the embedded 135M teacher
    PYTHONPATH=. python bench/gguf_eval_speed.py --gguf FILE.gguf   # e.g. a student's Q8_0
    PYTHONPATH=. python bench/gguf_eval_speed.py --gguf FILE.gguf --widths 8 --unprobed
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from flows.embedded import embedded_gguf
from flows.evaluate.engines import GGUFEngine
from flows.evaluate.score import CHUNK
from flows.ingest.demo import generate
from flows.prompting.check import student_template
from flows.settings import cpu_threads
from flows.spec import load


def reused_prefix(engine: GGUFEngine, conversations, max_new_tokens):
    """create_chat_completion as stairs called it before batching: no reset between rows, so
    each prompt reuses the KV of the prefix it shares with the row before."""
    texts, n = [], 0
    for messages in conversations:
        reply = engine.llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1,
                                                  max_tokens=max_new_tokens, seed=0)
        texts.append(reply["choices"][0]["message"]["content"] or "")
        n += reply["usage"]["completion_tokens"]
    return texts, n


def counted(decoder):
    """A BatchedDecoder called as GGUFEngine.generate is: texts and the total token count."""
    def call(conversations, max_new_tokens):
        texts, counts = decoder.generate(conversations, max_new_tokens)
        return texts, sum(counts)
    return call


def timed(fn, conversations, max_new_tokens):
    t0 = time.perf_counter()
    texts, tokens = [], 0
    for c in range(0, len(conversations), CHUNK):
        out, n = fn(conversations[c:c + CHUNK], max_new_tokens)
        texts += out
        tokens += n
    return time.perf_counter() - t0, texts, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path, help="a GGUF file (default: the embedded teacher)")
    ap.add_argument("--curriculum", type=Path, default=Path("curricula/quickstart.yaml"))
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--widths", default="4,8,16")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unprobed", action="store_true",
                    help="also decode each width unprobed (W rows a step whatever the probe says)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    path = args.gguf or embedded_gguf()
    spec = load(args.curriculum)
    template = student_template(spec)
    rows = list(generate(args.rows, seed=7, people=2, colors=3))  # the climb's hardest level
    threads = cpu_threads()
    widths = [int(w) for w in args.widths.split(",")]
    engines = {"before": GGUFEngine(path, threads=threads, width=1),
               "one at a time": GGUFEngine(path, threads=threads, width=1),
               **{f"batched {w}": GGUFEngine(path, threads=threads, width=w) for w in widths}}
    calls = {"before": lambda c, m: reused_prefix(engines["before"], c, m),
             "one at a time": engines["one at a time"].generate_one_at_a_time,
             **{f"batched {w} (probed: {engines[f'batched {w}'].batched_decoder().width})":
                engines[f"batched {w}"].generate for w in widths}}
    unprobed = {}
    if args.unprobed:
        from flows.evaluate.batched import BatchedDecoder

        one = engines["one at a time"]
        for w in widths:
            unprobed[w] = BatchedDecoder(one.llm, one.formatter, w, threads)
            calls[f"unprobed {w}"] = counted(unprobed[w])
    results = []
    for few_shot in (False, True):
        conversations = [template.render(r, few_shot=few_shot) for r in rows]
        runs = {name: [] for name in calls}
        for _ in range(args.repeats):  # alternated, so drift hits every path alike
            for name, fn in calls.items():
                runs[name].append(timed(fn, conversations, args.max_new_tokens))
        reference = runs["one at a time"][0][1]
        base = statistics.median(s for s, _, _ in runs["before"])
        for name, got in runs.items():
            seconds = statistics.median(s for s, _, _ in got)
            row = {"few_shot": few_shot, "path": name, "seconds": round(seconds, 2),
                   "rows_per_s": round(len(rows) / seconds, 2),
                   "speedup_vs_before": round(base / seconds, 2),
                   "tokens": got[0][2],
                   "identical": all(texts == reference for _, texts, _ in got)}
            results.append(row)
            print(json.dumps(row), flush=True)
    for decoder in unprobed.values():
        decoder.close()
    for engine in engines.values():
        engine.close()
    print(f"{path.name}, {threads} thread(s), {len(rows)} rows, {args.max_new_tokens} new tokens "
          f"at most, medians of {args.repeats}")
    print("| prompts | path | seconds | rows/s | vs before | replies identical to width 1 |")
    print("|---|---|---:|---:|---:|---|")
    for r in results:
        print(f"| {'worked examples' if r['few_shot'] else 'zero-shot'} | {r['path']} | "
              f"{r['seconds']} | {r['rows_per_s']} | {r['speedup_vs_before']}x | "
              f"{'yes' if r['identical'] else 'no'} |")
    if args.json:
        args.json.write_text(json.dumps({"gguf": str(path), "threads": threads,
                                         "rows": len(rows), "results": results}, indent=2))


if __name__ == "__main__":
    main()
