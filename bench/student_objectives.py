"""Experiment: base vs `label` vs `cot` vs `step_by_step` students on the quickstart task.

1. Teacher rationales: the embedded teacher (SmolLM2-135M-Instruct GGUF, llama.cpp in-process)
   answers demo 'sum' problems through the `rationale` template, 4 samples at temperature 0.8;
   a problem keeps its first sample whose answer matches the gold one (STaR-style filter, the
   same flows/answers.py rule curation uses). Cached in OUT/teacher.jsonl: reruns skip this.
2. The same kept rows train one student per objective from the same base, same seed, same steps.
3. Every model, and the untrained base, answers held-out demo problems (a different seed, so
   different invented people and numbers) greedily; exact-match accuracy. Nothing is tuned on
   them.

    PYTHONPATH=. python bench/student_objectives.py --train 120 --eval 40 --steps 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def teacher_rows(problems: list[dict], template, out: Path, samples: int,
                 temperature: float, max_tokens: int) -> list[dict]:
    from llama_cpp import Llama

    from flows.answers import answers_match
    from flows.embedded import embedded_gguf

    cache = out / "teacher.jsonl"
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            done[r["id"]] = r
    todo = [p for p in problems if p["id"] not in done]
    if todo:
        llm = Llama(model_path=str(embedded_gguf()), n_ctx=1024, n_threads=1, seed=0,
                    verbose=False)
        with open(cache, "a") as f:
            for i, p in enumerate(todo):
                messages = template.render(p)
                kept = None
                for s in range(samples):
                    reply = llm.create_chat_completion(messages=messages, temperature=temperature,
                                                       max_tokens=max_tokens, seed=1000 * i + s)
                    item = template.parse(reply["choices"][0]["message"]["content"] or "")[0]
                    if item.get("error") is None and answers_match(item.get("answer"), p["answer"]):
                        kept = {"rationale": item["rationale"], "answer": item["answer"],
                                "sample": s}
                        break
                record = {"id": p["id"], "messages": json.dumps(messages), "kept": kept}
                f.write(json.dumps(record) + "\n")
                f.flush()
                done[p["id"]] = record
                print(f"teacher {i + 1}/{len(todo)} kept={kept is not None}", flush=True)
        llm.close()
    return [{"id": r["id"], "messages": r["messages"], **r["kept"]}
            for r in (done[p["id"]] for p in problems) if r["kept"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=120)
    p.add_argument("--eval", type=int, default=40)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--objectives", default="label,cot,step_by_step")
    p.add_argument("--out", type=Path, default=Path("student-objectives"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from flows.corpus import demo
    from flows.evaluate import evaluate_model
    from flows.prompting import load_template
    from flows.student import base, examples
    from flows.student.trainer import TrainConfig, fit, prepare

    template = load_template("rationale")
    train_problems = [{"id": f"t{i}", **r} for i, r in enumerate(demo.generate(args.train, seed=0))]
    eval_problems = [{"id": f"e{i}", **r} for i, r in enumerate(demo.generate(args.eval, seed=1))]
    t0 = time.perf_counter()
    rows = teacher_rows(train_problems, template, args.out, args.samples, 0.8,
                        args.max_new_tokens)
    gen_s = time.perf_counter() - t0
    print(f"kept {len(rows)} of {len(train_problems)} problems ({gen_s:.0f} s)", flush=True)

    results = []
    model, tok, _ = base.load("smollm2-135m")
    r = evaluate_model((model, tok), eval_problems, template, max_new_tokens=args.max_new_tokens)
    results.append({"model": "base (untrained)", "accuracy": r["accuracy"], "correct": r["correct"],
                    "n": r["n"], "train_s": 0})
    print(results[-1], flush=True)
    for objective in args.objectives.split(","):
        model, tok, _ = base.load("smollm2-135m")
        cfg = TrainConfig(objective=objective, max_steps=args.steps, batch_size=args.batch_size,
                          learning_rate=args.lr, seed=0, max_length=384)
        groups = examples.build(rows, tok, objective, cfg.max_length).groups
        fitted = fit(prepare(model, cfg), groups, cfg, pad_id=tok.pad_token_id, progress=False)
        r = evaluate_model((model, tok), eval_problems, template,
                           max_new_tokens=args.max_new_tokens)
        results.append({"model": objective, "accuracy": r["accuracy"], "correct": r["correct"],
                        "n": r["n"], "train_s": round(fitted.seconds),
                        "final_loss": fitted.losses[-1]["loss"]})
        print(results[-1], flush=True)
        (args.out / f"predictions-{objective}.json").write_text(json.dumps(r["predictions"], indent=1))
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{len(rows)} teacher rows kept of {args.train} problems; {args.steps} steps x batch "
          f"{args.batch_size}, lr {args.lr}, full fine-tune; eval {args.eval} held-out problems")
    print("| model | accuracy | correct / n | train s |\n|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['accuracy']:.1%} | {r['correct']}/{r['n']} | {r['train_s']} |")


if __name__ == "__main__":
    main()
