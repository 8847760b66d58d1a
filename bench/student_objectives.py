"""Experiment: the untrained base vs one student per objective, same data, same steps, same rows.

The data is a curriculum's round 0, made by stairs itself: ingest, generate and curate run as a
new run "student-objectives" of the curriculum. In a STAIRS_HOME that already ran the curriculum
every stage is reused or answered from the response cache. curricula/kd-topk.yaml is the
quickstart's task with the teacher's top-5 logprobs kept (greedy: the same text, so the same
curated rows), which every objective here can use. Then the train stage runs once per variant
with the curriculum's student settings (same base, seed, steps, batch, learning rate) changed
only by the variant's keys, and each student is scored on the same held-out rows as the
staircase table (the first `quantization.eval_rows` of the eval split; nothing is tuned on them).
A step_by_step student is also asked its label task (the "[label] " prefix, the paper's way):
with --quantize every quantized file of it, else the float student.

Teacher tokens are what the teacher processed for a student: the generate stage's prompt and
completion tokens (paid or from the cache) for the objectives that learn from generated rows,
the scoring requests' tokens for on_policy, both for on_policy+cot. --equal-tokens adds `cot @
on_policy's tokens`: cot trained on the curated rows of only as many generate requests (in
corpus order) as fit in on_policy's teacher tokens, so the two are compared at equal teacher cost.

    STAIRS_HOME=~/.stairs PYTHONPATH=. python bench/student_objectives.py curricula/kd-topk.yaml \
        --objectives label,cot,cot-shuffled,step_by_step,kd-topk,kd-logits,cot-cut,on_policy \
        --equal-tokens --json objectives.json
    # tiny CPU check of the plumbing (minutes): --objectives cot --eval-rows 4
    # real data (curricula/drop.yaml), every student also quantized and scored on 150 rows:
    #   --objectives label,step_by_step --quantize --float-eval-rows 40
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from contextlib import ExitStack
from pathlib import Path

EVERY_OTHER_LAYER = list(range(0, 30, 2))  # 15 of SmolLM2-135M's 30 layers (kd-logits.yaml)
VARIANTS: dict[str, dict] = {
    "label": {"objective": "label"},
    "cot": {"objective": "cot"},
    "cot-shuffled": {"objective": "cot", "order": "shuffled"},
    "label-shuffled": {"objective": "label", "order": "shuffled"},
    "step_by_step": {"objective": "step_by_step"},
    "step_by_step-shuffled": {"objective": "step_by_step", "order": "shuffled"},
    "kd-topk": {"objective": "kd", "kd_top_k": 5},
    "kd-logits": {"objective": "kd", "kd_teacher": "smollm2-135m",
                  "keep_layers": EVERY_OTHER_LAYER},
    "cot-cut": {"objective": "cot", "keep_layers": EVERY_OTHER_LAYER},
    "on_policy": {"objective": "on_policy", "kd_top_k": 5},
    "on_policy+cot": {"objective": "on_policy", "kd_top_k": 5, "on_policy_cot_weight": 0.5},
}
FROM_ROWS = ("label", "cot", "cot-shuffled", "label-shuffled", "step_by_step",
             "step_by_step-shuffled", "kd-topk", "kd-logits", "cot-cut")


class LabelTask:
    """The generate template with the label-task prefix on the request (as in training)."""

    def __init__(self, template):
        from flows.train.examples import LABEL_PREFIX

        self.template, self.name = template, template.name + "+label"
        # Its own hash, so the catalog never takes a label-task score for the template's.
        self.content_hash = hashlib.sha256(
            f"{template.content_hash}{LABEL_PREFIX}".encode()).hexdigest()

    def render(self, row, few_shot=False):
        from flows.train.examples import LABEL_PREFIX, with_prefix

        return with_prefix(self.template.render(row, few_shot=few_shot), LABEL_PREFIX)


def data(spec, ws, kind: str, held: ExitStack):
    """ingest -> generate -> curate of round 0 in a new run; (run id, generate, curate). The run's
    lock is held (in `held`) until the experiment ends, as a `stairs` command holds its run's:
    without it any other command on this catalog took the run for a killed one and marked it and
    its running stage failed."""
    from flows.curate import curate
    from flows.generate import generate
    from flows.ingest import ingest

    run = held.enter_context(ws.run_scope(None, lambda: ws.start_run(spec, kind).id))
    ingest(spec, ws, run.id)
    generated = generate(spec, ws, run.id, round_index=0, progress_bar=False)
    return run.id, generated, curate(spec, ws, run.id, round_index=0)


def generation_tokens(g) -> int:
    return (g.prompt_tokens + g.completion_tokens + g.cached_prompt_tokens
            + g.cached_completion_tokens)


def requests_within(ws, run_id: str, budget: int) -> int:
    """How many generate requests, in corpus order, the teacher answered within `budget` tokens."""
    corpus = ws.store.table(ws.shards(ws.latest_stage("ingest", run_id=run_id),
                                      "corpus")).to_pylist()
    gen = ws.store.table(ws.stage_shards(run_id, "generate", "generated",
                                         round_index=0)).to_pylist()
    cost: dict[str, int] = {}
    for r in gen:
        cost[r["source_id"]] = cost.get(r["source_id"], 0) + r["prompt_tokens"] + \
            r["completion_tokens"]
    spent = n = 0
    for row in corpus:
        if row["id"] not in cost:
            break
        spent += cost[row["id"]]
        if spent > budget:
            break
        n += 1
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("curriculum", type=Path)
    p.add_argument("--objectives", default="label,cot,step_by_step",
                   help=f"Comma-separated variants of: {', '.join(VARIANTS)}.")
    p.add_argument("--eval-rows", type=int, default=None,
                   help="Held-out rows (default: the curriculum's quantization.eval_rows).")
    p.add_argument("--seed", type=int, default=None,
                   help="Training seed of every variant (default: the curriculum's student.seed): "
                        "the batch order and, for on_policy, the samples.")
    p.add_argument("--on-policy-steps", type=int, default=None,
                   help="Steps of the on_policy variants (default: the curriculum's max_steps); "
                        "each step samples and scores batch_size completions.")
    p.add_argument("--equal-tokens", action="store_true",
                   help="Also train cot on as many generated rows as on_policy's teacher tokens.")
    p.add_argument("--quantize", action="store_true",
                   help="Also run the quantize stage on every student: its quantization section's "
                        "files (F16 GGUF, k-quants, ...), each scored on quantization.eval_rows.")
    p.add_argument("--float-eval-rows", type=int, default=None,
                   help="Held-out rows for the transformers (float) score of each student and the "
                        "base (default: --eval-rows); with --quantize the F16 GGUF is the float "
                        "score on all rows, so this can be small.")
    p.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    args = p.parse_args()
    with ExitStack() as held:  # the data runs' locks, given back when the experiment ends
        experiment(args, held)


def experiment(args, held: ExitStack) -> None:
    from flows.evaluate import eval_template, evaluate_model, held_out_rows
    from flows.preflight import load_checked
    from flows.quantize import quantize
    from flows.train import train
    from flows.workspace import Workspace
    from storage.tables import Model

    spec = load_checked(args.curriculum)
    n_eval = args.eval_rows or spec.quantization.eval_rows
    ws = Workspace.open()
    results = []
    t0 = time.perf_counter()
    run_id, generated, curated = data(spec, ws, "student-objectives", held)
    gen_tokens = generation_tokens(generated)
    print(f"run {run_id}: {generated.rows_written} teacher rows ({gen_tokens} teacher tokens), "
          f"{curated.kept} kept by curation ({time.perf_counter() - t0:.0f} s)", flush=True)

    def run(name: str, variant: dict, data_run: str, first: bool, tokens_of_rows: int) -> dict:
        student = spec.student.model_copy(update={
            **variant, "eval_rows": args.float_eval_rows or n_eval, "evaluate_base": first})
        started = time.perf_counter()
        s = train(spec.model_copy(update={"student": student}), ws, data_run)
        if first:
            results.append({"model": "base (untrained)", "accuracy": s.base_accuracy})
            print(results[-1], flush=True)
        tokens = (tokens_of_rows if (name in FROM_ROWS or student.on_policy_cot_weight) else 0) \
            + s.teacher_tokens
        results.append({"model": name, "seed": student.seed, "accuracy": s.student_accuracy,
                        "examples": s.examples,
                        "steps": s.steps, "final_loss": round(s.final_loss, 4),
                        "loss_terms": s.loss_terms, "teacher_tokens": tokens,
                        "correct_per_1k_teacher_tokens": round(
                            1000 * s.student_accuracy * s.eval_rows / tokens, 4) if tokens else None,
                        "train_tokens_per_s": round(s.train_tokens_per_s, 1),
                        "stage_runs": s.stage_runs, "student_model_id": s.student_model_id,
                        "seconds": round(time.perf_counter() - started)})
        print({k: v for k, v in results[-1].items() if k != "stage_runs"}, flush=True)
        trained = results[-1]
        if args.quantize:
            model = ws.catalog.get(Model, s.student_model_id)
            q = quantize(spec, ws, data_run, student=model)
            for art in q.table:
                results.append({"model": f"{name}, {art.quant}", "accuracy": art.accuracy,
                                "size_mb": art.size_mb, "eval_rows": q.eval_rows})
                print(results[-1], flush=True)
                if name.startswith("step_by_step"):
                    label_task(f"{name}, {art.quant}", art.model_id)
        elif name.startswith("step_by_step"):
            label_task(name, s.student_model_id)
        return trained

    def label_task(name: str, model_id: int) -> None:
        """The paper's inference: the step_by_step student asked for the answer alone."""
        rows, _ = held_out_rows(ws, run_id, n_eval)
        scored = evaluate_model(f"catalog:{model_id}", rows, LabelTask(eval_template(spec)),
                                catalog=ws.catalog,
                                max_new_tokens=spec.student.eval_max_new_tokens)
        results.append({"model": f"{name}, asked its label task", "accuracy": scored.accuracy,
                        "eval_rows": scored.n})
        print(results[-1], flush=True)

    for i, name in enumerate(args.objectives.split(",")):
        variant = dict(VARIANTS[name])
        if args.seed is not None:
            variant["seed"] = args.seed
        if name.startswith("on_policy"):
            if args.on_policy_steps:
                variant["max_steps"] = args.on_policy_steps
            if spec.teacher.backend == "llamacpp":
                # The same GGUF in-process: llama-cpp-python's server spends ~40 ms of Python per
                # echoed token (flows/train/onpolicy.py: GGUFScorer); same numbers, same tokens.
                variant["on_policy_scorer"] = "in_process"
        result = run(name, variant, run_id, i == 0, gen_tokens)
        if name == "on_policy" and args.equal_tokens:
            budget = result["teacher_tokens"]
            m = requests_within(ws, run_id, budget)
            small = spec.model_copy(update={"generate": spec.generate.model_copy(
                update={"max_rows": m})})
            small_run, small_gen, small_cur = data(small, ws, "student-objectives-budget", held)
            print(f"cot at {budget} teacher tokens: the first {m} generate requests, "
                  f"{small_cur.kept} curated rows", flush=True)
            student = spec.student.model_copy(update={
                "objective": "cot", "eval_rows": n_eval, "evaluate_base": False})
            s = train(small.model_copy(update={"student": student}), ws, small_run)
            tokens = generation_tokens(small_gen)
            results.append({"model": f"cot @ on_policy's teacher tokens ({small_cur.kept} rows)",
                            "accuracy": s.student_accuracy, "examples": s.examples,
                            "steps": s.steps, "final_loss": round(s.final_loss, 4),
                            "loss_terms": s.loss_terms, "teacher_tokens": tokens,
                            "correct_per_1k_teacher_tokens": round(
                                1000 * s.student_accuracy * s.eval_rows / tokens, 4)})
            print(results[-1], flush=True)

    print(f"\n{curated.kept} curated rows; {spec.student.max_steps} steps x batch "
          f"{spec.student.batch_size}, lr {spec.student.learning_rate}, {spec.student.method}; "
          f"{n_eval} held-out rows, greedy")
    print("| student | held-out accuracy | examples | final loss | loss terms (first -> last) "
          "| teacher tokens | right answers per 1k teacher tokens |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.1%}"
        terms = ", ".join(f"{k} {a:.3f} -> {b:.3f}" for k, (a, b) in
                          (r.get("loss_terms") or {}).items())
        print(f"| {r['model']} | {acc} | {r.get('examples', '')} | {r.get('final_loss', '')} | "
              f"{terms} | {r.get('teacher_tokens', '')} | "
              f"{r.get('correct_per_1k_teacher_tokens') or ''} |")
    if args.json:
        args.json.write_text(json.dumps({"run_id": run_id, "kept": curated.kept,
                                         "eval_rows": n_eval, "results": results}, indent=1))


if __name__ == "__main__":
    main()
