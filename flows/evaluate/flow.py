"""Evaluate flow: score any model (the embedded base, a student folder, a GGUF file,
catalog:<id>) on a curriculum's held-out rows, and the functions every stage scores with.

    stairs eval smollm2-135m --curriculum curricula/quickstart.yaml

`evaluate_model` is the one entry point: the staircase scores its teacher with it, the train stage
its student, and the quantize stage every artifact (through `score.measure`, which calls the same
`answer_accuracy`). The eval rows are `held_out_rows` (the ingest stage's eval split, by id), and
the template is the curriculum's generate template from its own prompts folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from flows.evaluate import score
from flows.evaluate.engines import Engine, TorchEngine, open_engine
from flows.orchestration import step, task_runner
from flows.params import EvalParams
from flows.results import ModelEval
from flows.spec import Curriculum
from flows.workspace import Workspace


class EvalError(RuntimeError):
    """Evaluation cannot start: says which run or split is missing."""


def held_out_rows(ws: Workspace, run_id: str, limit: int | None) -> tuple[list[dict], list[int]]:
    """The run's held-out rows in a stable order (by id), the first `limit` of them (None: all;
    0: none): the same rows for every model scored, and the ids of the shards they came from."""
    ingest = ws.latest_stage("ingest", run_id=run_id)
    if ingest is None:
        raise EvalError(f"run {run_id} has no completed ingest stage: nothing to evaluate on")
    shards = ws.shards(ingest, "eval")
    rows = sorted(ws.store.table(shards).to_pylist(), key=lambda r: r["id"]) if shards else []
    return (rows if limit is None else rows[:limit]), [s.id for s in shards]


def eval_template(spec: Curriculum):
    """The template students are asked with: the curriculum's generate template, or the
    `student` template it names (a disentangle request is not a question; its rows train
    "passage + question -> rationale + answer", and held-out questions are asked the same way),
    from the curriculum's own prompts folder when it names one."""
    from flows.prompting.check import student_template

    return student_template(spec)


def evaluate_model(model, rows: list[dict], template, *, max_new_tokens: int,
                   few_shot: bool = False, catalog=None, with_loss: bool = False) -> ModelEval:
    """Score a model on eval rows. `model`: a reference ('smollm2-135m', a folder, a .gguf file,
    'catalog:<id>') or an open Engine. Students are asked without the template's worked examples
    (as they were trained); few_shot=True asks the way a base teacher teaches."""
    engine: Engine = model if hasattr(model, "generate") else open_engine(model, catalog=catalog)
    where = str(getattr(engine, "path", model if isinstance(model, str) else "in-memory"))
    try:
        scored = score.answer_accuracy(engine, rows, template, few_shot=few_shot,
                                       max_new_tokens=max_new_tokens,
                                       description=f"score {Path(where).name or where}")
        loss = None
        if with_loss and isinstance(engine, TorchEngine):
            loss = score.target_loss(engine.model, engine.tok, rows, template,
                               batch_size=engine.batch_size)
    finally:
        if engine is not model:
            engine.close()
    return ModelEval(
        format=engine_format(engine.name), model=where, template=template.name,
        template_hash=getattr(template, "content_hash", None), few_shot=few_shot, n=scored.n,
        correct=scored.correct, accuracy=scored.accuracy, generated_tokens=scored.generated_tokens,
        seconds=scored.seconds, tokens_per_s=scored.tokens_per_s,
        eval_loss=loss["loss"] if loss else None, perplexity=loss["perplexity"] if loss else None,
        loss_rows=loss["rows"] if loss else 0, predictions=scored.predictions)


METRICS = {"accuracy": "eval_accuracy", "eval_loss": "eval_loss", "perplexity": "eval_perplexity",
           "tokens_per_s": "eval_tokens_per_s"}


def record(catalog, result: ModelEval, *, model_id: int, run_id: str | None = None,
           stage_id: int | None = None, round_index: int | None = None,
           eval_shard_ids: list[int] = ()) -> list:
    """Evaluation metrics as catalog rows, linked to the model (and through it, via ModelShard,
    to the shards it was trained on; their ids are repeated in meta for direct reading)."""
    trained_on = [s.id for s in catalog.model_training_shards(model_id)]
    meta = {"n": result.n, "correct": result.correct, "template": result.template,
            "template_hash": result.template_hash, "format": result.format,
            "eval_shards": list(eval_shard_ids), "training_shards": trained_on}
    rows = []
    for key, name in METRICS.items():
        value = getattr(result, key)
        if value is not None:
            rows.append(catalog.log_metric(name, value, run_id=run_id, stage_id=stage_id,
                                           model_id=model_id, round_index=round_index,
                                           split="eval", meta=meta))
    return rows


def engine_format(engine_name: str) -> str:
    """What a score records as its `format`: the kind of file the engine reads."""
    return {"llama.cpp": "gguf", "torch": "hf"}.get(engine_name, engine_name)


def earlier_accuracy(catalog, model_id: int, eval_ids: list[int], n: int, template_hash,
                     engine_name: str) -> float | None:
    """The model's recorded accuracy on these eval rows with this template through this kind of
    engine (torch and llama.cpp replies can differ), if it was scored."""
    for m in catalog.metrics(model_id=model_id):
        meta = json.loads(m.meta_json)
        if (m.name == "eval_accuracy" and meta.get("eval_shards") == eval_ids
                and meta.get("n") == n and meta.get("template_hash") == template_hash
                and meta.get("format") == engine_format(engine_name)):
            return m.value
    return None


@step(name="evaluate-model")
def evaluate_and_record(ws: Workspace, model, model_id: int, rows: list[dict], spec: Curriculum,
                        *, run_id: str, stage_id: int | None, round_index: int | None,
                        eval_ids: list[int], as_teacher: bool = False) -> ModelEval:
    """A student (or any model) scored as the train stage and `stairs eval` score it: no worked
    examples, student.eval_max_new_tokens, with the target loss when it runs in torch. With
    as_teacher, as the staircase scores its teacher: teacher.few_shot, quantization's
    max_new_tokens, no loss."""
    if as_teacher:
        result = evaluate_model(model, rows, eval_template(spec),
                                max_new_tokens=spec.quantization.max_new_tokens,
                                catalog=ws.catalog, few_shot=spec.teacher.few_shot)
    else:
        result = evaluate_model(model, rows, eval_template(spec),
                                max_new_tokens=spec.student.eval_max_new_tokens,
                                catalog=ws.catalog, with_loss=True)
    record(ws.catalog, result, model_id=model_id, run_id=run_id, stage_id=stage_id,
           round_index=round_index, eval_shard_ids=eval_ids)
    return result.model_copy(update={"model_id": model_id, "run_id": run_id})


@flow(name="evaluate", log_prints=True, task_runner=task_runner())
def eval_flow(params: EvalParams) -> ModelEval:
    """Score any model (base, student, GGUF, catalog:<id>) on the curriculum's held-out rows."""
    from flows.ingest import ingest
    from flows.models import register_base

    spec, model = params.load(), params.model
    ws = Workspace.open()
    with ws.run_scope(None, lambda: ws.start_run(spec, "eval").id) as run:
        ingest(spec, ws, run.id)  # reused when this corpus was ingested before
        # student.eval_rows 0 (the train stage scores nothing) falls back to the quantize
        # stage's rows, not to all of them.
        limit = params.rows or (spec.quantization.eval_rows if spec.student.eval_rows == 0
                                else spec.student.eval_rows)
        rows, eval_ids = held_out_rows(ws, run.id, limit)
        if not rows:
            raise EvalError(f"curriculum '{spec.name}' has no held-out eval rows")
        row = register_base(ws.catalog, model, run.id)
        with ws.stage(run.id, "evaluate",
                      params={"model": model, "as_teacher": params.as_teacher}) as st:
            result = evaluate_and_record(ws, model, row.id, rows, spec, run_id=run.id,
                                         stage_id=st.id, round_index=None, eval_ids=eval_ids,
                                         as_teacher=params.as_teacher)
            st.summary.update({k: getattr(result, k) for k in (
                "accuracy", "correct", "n", "tokens_per_s", "eval_loss", "format")})
    return result
