"""How well the embedded teacher (SmolLM2-135M-Instruct, Q4_1 GGUF) solves demo problems through a
prompt template: greedy accuracy, and pass@k over k samples at a temperature, where a sample
counts only if it is right AND parseable by the template's parser (what curation can keep).

    PYTHONPATH=. python bench/prompt_accuracy.py                         # prompts/rationale.yaml
    PYTHONPATH=. python bench/prompt_accuracy.py --templates rationale bench/prompt_variants/*.yaml
    PYTHONPATH=. python bench/prompt_accuracy.py --model STUDENT.gguf --zero-shot \
        --templates prompts/pairwise/rationale.yaml --colors 4     # a student as the next teacher

Right = answers_match(extract_answer(reply), gold): the same rule curation and evaluation use.
Runs llama.cpp in-process (no server) on CPU; prompt prefixes are reused between the samples of
one problem by llama.cpp's own prefix cache. For a curriculum's own rows, teacher and curation,
the product command is `stairs prompts compare FILE A B` (parse rate, kept rate, accuracy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from flows.answers import answers_match, extract_answer
from flows.embedded import embedded_gguf
from flows.ingest import demo
from flows.prompting import load_template


def template_arg(ref: str):
    p = Path(ref)
    if p.suffix == ".yaml":
        return load_template(p.stem, p.parent)
    return load_template(ref)


def run_problem(llm, template, row: dict, *, samples: int, temperature: float,
                max_tokens: int, few_shot: bool = True) -> dict:
    messages = template.render(row, few_shot=few_shot)

    def ask(temp: float, seed: int) -> dict:
        t0 = time.perf_counter()
        r = llm.create_chat_completion(messages=messages, temperature=temp, top_p=1.0,
                                       max_tokens=max_tokens, seed=seed)
        text = r["choices"][0]["message"]["content"] or ""
        finish = r["choices"][0]["finish_reason"]
        parsed = template.parse(text, finish)[0]
        return {"text": text, "finish": finish, "seconds": time.perf_counter() - t0,
                "tokens": r["usage"]["completion_tokens"],
                "right": answers_match(extract_answer(text), row["answer"]),
                "parser_right": answers_match(parsed["answer"], row["answer"]),
                "parseable": parsed["error"] is None, "error": parsed["error"]}

    greedy = ask(0.0, 0)
    sampled = [ask(temperature, 1000 + k) for k in range(samples)]
    return {"greedy": greedy, "sampled": sampled}


def summarize(results: list[dict]) -> dict:
    g = [r["greedy"] for r in results]
    s = [x for r in results for x in r["sampled"]]
    gens = g + s
    share = lambda xs, key: sum(bool(x[key]) for x in xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "problems": len(results),
        "greedy_right": share(g, "right"),
        "greedy_parseable": share(g, "parseable"),
        "sample_right": share(s, "right"),
        "sample_parseable": share(s, "parseable"),
        # What curation can keep: at least one sample right by the shared rule and parseable.
        "pass_at_k": sum(any(x["right"] and x["parseable"] for x in r["sampled"])
                         for r in results) / len(results),
        "parser_agrees": sum(x["right"] == x["parser_right"] for x in gens) / len(gens),
        "tokens_median": statistics.median(x["tokens"] for x in gens),
        "seconds_per_gen": statistics.median(x["seconds"] for x in gens),
        "errors": {e: sum(x["error"] == e for x in gens)
                   for e in sorted({x["error"] for x in gens if x["error"]})},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--templates", nargs="+", default=["rationale"],
                    help="Template names in prompts/ or paths to template .yaml files.")
    ap.add_argument("--tasks", nargs="+", default=["sum", "lookup"])
    ap.add_argument("--n", type=int, default=30, help="Problems per task.")
    ap.add_argument("--people", type=int, default=2, help="People per demo passage.")
    ap.add_argument("--colors", type=int, default=2, help="Colors per person.")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--max-tokens", type=int, default=160)
    # One thread: on a shared, oversubscribed CPU llama.cpp's threads spin-wait on each other;
    # measured here 1 thread ran ~10x faster per generation than 2 (load average 12 on 2 cores).
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", type=Path, help="A GGUF file to ask instead of the embedded "
                    "teacher (a promoted student: what it would teach).")
    ap.add_argument("--zero-shot", action="store_true", help="Drop the template's worked "
                    "examples, as students are asked.")
    ap.add_argument("--show", type=int, default=0, help="Print this many greedy replies per run.")
    ap.add_argument("--json", type=Path, help="Also write all replies and numbers here.")
    args = ap.parse_args()

    from flows.llama_cpu import open_llama

    llm = open_llama(args.model or embedded_gguf(), n_ctx=2048, n_threads=args.threads,
                     verbose=False)
    report = []
    print("| template | task | greedy right | greedy parseable | sample right | "
          f"pass@{args.samples} (right+parseable) | parser agrees | median tokens | s/gen |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ref in args.templates:
        template = template_arg(ref)
        for task in args.tasks:
            rows = [dict(r, id=f"{task}-{i}")
                    for i, r in enumerate(demo.generate(args.n, tasks=[task], people=args.people,
                                                               colors=args.colors))]
            results = [run_problem(llm, template, r, samples=args.samples,
                                   temperature=args.temperature, max_tokens=args.max_tokens,
                                   few_shot=not args.zero_shot)
                       for r in rows]
            s = summarize(results)
            report.append({"template": ref, "hash": template.content_hash[:12], "task": task,
                           **s, "replies": results})
            print(f"| {ref} | {task} | {s['greedy_right']:.0%} | {s['greedy_parseable']:.0%} | "
                  f"{s['sample_right']:.0%} | {s['pass_at_k']:.0%} | {s['parser_agrees']:.0%} | "
                  f"{s['tokens_median']:.0f} | {s['seconds_per_gen']:.2f} |", flush=True)
            for r in results[:args.show]:
                print("    >", r["greedy"]["text"].replace("\n", " | ")[:300])
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
