"""Experiment: the untrained base vs `label` vs `cot` vs `step_by_step` students, same data.

The data is the quickstart's round 0, made by stairs itself: ingest, generate (the embedded
teacher, greedy, through the `rationale` template) and curate (rationales whose answer matches
gold) run as a new run "student-objectives" of the curriculum. In a STAIRS_HOME that already
ran the quickstart every stage is reused or answered from the response cache, so the rows are
exactly the ones the quickstart's round-0 student learned from. Then the train stage runs once
per objective with the curriculum's student settings (same base, seed, steps, batch, learning
rate), and each student is scored on the same held-out rows as the staircase table (the first
`quantization.eval_rows` of the eval split; nothing is tuned on them). A step_by_step student is
also asked its label task (the "[label] " prefix, the paper's way of inference).

    STAIRS_HOME=~/.stairs PYTHONPATH=. python bench/student_objectives.py curricula/quickstart.yaml
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


class LabelTask:
    """The generate template with the label-task prefix on the request (as in training)."""

    def __init__(self, template):
        self.template, self.name, self.content_hash = template, template.name + "+label", None

    def render(self, row, few_shot=False):
        from flows.train.examples import LABEL_PREFIX, with_prefix

        return with_prefix(self.template.render(row, few_shot=few_shot), LABEL_PREFIX)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("curriculum", type=Path)
    p.add_argument("--objectives", default="label,cot,step_by_step")
    p.add_argument("--eval-rows", type=int, default=None,
                   help="Held-out rows (default: the curriculum's quantization.eval_rows).")
    p.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = p.parse_args()

    from flows.curate import curate
    from flows.evaluate import eval_template, evaluate_model, held_out_rows
    from flows.generate import generate
    from flows.ingest import ingest
    from flows.preflight import load_checked
    from flows.train import train
    from flows.workspace import Workspace

    spec = load_checked(args.curriculum)
    n_eval = args.eval_rows or spec.quantization.eval_rows
    ws = Workspace.open()
    results = []
    with ws.run_scope(None, lambda: ws.start_run(spec, "student-objectives").id) as run:
        t0 = time.perf_counter()
        ingest(spec, ws, run.id)
        generated = generate(spec, ws, run.id, round_index=0, progress_bar=False)
        curated = curate(spec, ws, run.id, round_index=0)
        print(f"run {run.id}: {generated.rows_written} teacher rows, {curated.kept} "
              f"kept by curation ({time.perf_counter() - t0:.0f} s: stages another run of this "
              "curriculum finished are reused)", flush=True)
        for i, objective in enumerate(args.objectives.split(",")):
            student = spec.student.model_copy(update={
                "objective": objective, "eval_rows": n_eval, "evaluate_base": i == 0})
            s = train(spec.model_copy(update={"student": student}), ws, run.id)
            if i == 0:
                results.append({"model": "base (untrained)", "accuracy": s.base_accuracy})
                print(results[-1], flush=True)
            results.append({"model": objective, "accuracy": s.student_accuracy,
                            "examples": s.examples, "steps": s.steps,
                            "final_loss": round(s.final_loss, 4),
                            "train_tokens_per_s": round(s.train_tokens_per_s, 1)})
            print(results[-1], flush=True)
            if objective == "step_by_step":
                rows, _ = held_out_rows(ws, run.id, n_eval)
                label = evaluate_model(f"catalog:{s.student_model_id}", rows,
                                       LabelTask(eval_template(spec)), catalog=ws.catalog,
                                       max_new_tokens=spec.student.eval_max_new_tokens)
                results.append({"model": "step_by_step, asked its label task",
                                "accuracy": label.accuracy})
                print(results[-1], flush=True)
    print(f"\n{curated.kept} curated rows; {spec.student.max_steps} steps x batch "
          f"{spec.student.batch_size}, lr {spec.student.learning_rate}, {spec.student.method}; "
          f"{n_eval} held-out rows, greedy")
    print("| student | held-out accuracy | training examples | final loss | train tokens/s |")
    print("|---|---|---|---|---|")
    for r in results:
        acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.1%}"
        print(f"| {r['model']} | {acc} | {r.get('examples', '')} | {r.get('final_loss', '')} | "
              f"{r.get('train_tokens_per_s', '')} |")
    if args.json:
        args.json.write_text(json.dumps({"run_id": run.id, "kept": curated.kept,
                                         "eval_rows": n_eval, "results": results}, indent=1))


if __name__ == "__main__":
    main()
