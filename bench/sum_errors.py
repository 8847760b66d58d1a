"""Why a model misses the demo's sums: each held-out row of one level, asked as the staircase
asks a student (zero-shot, the curriculum's student template, greedy), sorted by what went wrong.

    STAIRS_HOME=... PYTHONPATH=. python bench/sum_errors.py curricula/climb.yaml RUN_ID MODEL \\
        --level two-three [--few-shot] [--show 5]

MODEL: a .gguf file, a model folder or `catalog:<id>` (what `stairs show RUN` lists).
Classes, from the reply's arithmetic steps (flows/curate/arithmetic.py's STEP: one step
"a + b + c = s", or a chain "a + b = t", "t + c = s") against the numbers of the asked person's
sentence in the passage:
- right: the answer matches the gold one (the shared rule of evaluation and curation);
- right operands, wrong total: the steps add exactly that person's numbers and one is wrong;
- right operands, other answer: every step holds, the answer line says something else;
- wrong operands: some other numbers (the other person's, or too few);
- no step: no arithmetic at all.
Docs: docs/results.md, *Climb* (run 5's round-0 student on two-three: 55 of 80 rows were right
operands with a wrong total, which is what prompts/pairwise/ addresses).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

from flows.climb import by_level
from flows.curate.arithmetic import STEP, evaluate
from flows.evaluate import evaluate_model, held_out_rows
from flows.prompting.check import student_template
from flows.spec import load
from flows.workspace import Workspace

ASKED = re.compile(r"does ([A-Z]\w*) have")


def classify(row: dict, prediction: dict) -> str:
    if prediction["correct"]:
        return "right"
    name = ASKED.search(row["question"])
    sentence = next((s for s in row["passage"].split(". ") if name and s.startswith(name[1])), "")
    wanted = sorted(float(n) for n in re.findall(r"\d+", sentence))
    steps = re.findall(STEP, prediction["output"] or "")
    if not steps:
        return "no step"
    parsed = [evaluate(s) for s in steps]
    holds = all(ok for ok, _, _ in parsed)
    # In a pairwise chain each later step adds the running total to one more number: the
    # numbers added are the first step's operands and every later step's last operand.
    operands = parsed[0][1] + [values[-1] for _, values, _ in parsed[1:]]
    if sorted(operands) != wanted:
        return "wrong operands"
    return "right operands, wrong total" if not holds else "right operands, other answer"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("curriculum")
    ap.add_argument("run_id")
    ap.add_argument("model")
    ap.add_argument("--level", required=True)
    ap.add_argument("--few-shot", action="store_true", help="Ask with the template's worked "
                    "examples, as a base teacher is asked.")
    ap.add_argument("--show", type=int, default=0, help="Print this many wrong replies.")
    args = ap.parse_args()

    spec = load(args.curriculum)
    ws = Workspace.open()
    # The rows the staircase scores per level: the first level_eval_rows held-out rows by id.
    held, _ = held_out_rows(ws, args.run_id, None)
    levels = by_level(held)
    if args.level not in levels:
        raise SystemExit(f"run {args.run_id}: no held-out rows of level {args.level!r} "
                         f"(levels: {', '.join(sorted(levels)) or 'none'})")
    rows = levels[args.level][:spec.staircase.level_eval_rows]
    scored = evaluate_model(args.model, rows, student_template(spec), few_shot=args.few_shot,
                            max_new_tokens=spec.quantization.max_new_tokens, catalog=ws.catalog)
    classes = Counter()
    shown = 0
    predictions = {p["id"]: p for p in scored.predictions}
    for row in rows:
        prediction = predictions[row["id"]]
        kind = classify(row, prediction)
        classes[kind] += 1
        if kind != "right" and shown < args.show:
            shown += 1
            print(f"  [{kind}] {row['passage']} | {row['question']} | "
                  + (prediction["output"] or "").replace("\n", " / "))
    print(f"{args.model} on {args.level}: accuracy {scored.accuracy:.1%} ({len(rows)} rows)")
    for kind, n in classes.most_common():
        print(f"| {kind} | {n} |")


if __name__ == "__main__":
    main()
