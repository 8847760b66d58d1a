"""Train flow: fine-tune the student on a round's curated "train" shards, then score it and its
untrained base on the held-out eval rows.

    stairs train curricula/quickstart.yaml            # latest run of this curriculum with curated rows
    stairs eval smollm2-135m --curriculum curricula/quickstart.yaml

The stage is resumable: checkpoints land in STAIRS_HOME/models/students/<run>-r<round>-<hash>/
checkpoints, and rerunning the same command after a crash continues from the newest one. The
trained model is saved as a plain safetensors folder (LoRA merged in) and registered in the
catalog with its parent base and the shards it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from prefect import flow

from flows import evaluate as ev
from flows.orchestration import in_flow_run, step, task_runner
from flows.params import EvalParams, RoundParams
from flows.settings import models_root
from flows.spec import Curriculum, StudentSpec
from flows.student import base as base_mod
from flows.student import examples as ex_mod
from flows.student.trainer import (
    TrainConfig, batch_plan, final_model, fit, pick_device, prepare, total_steps,
)
from flows.workspace import Workspace
from storage.tables import Model, Shard


class TrainError(RuntimeError):
    """The train stage cannot start: says which run/round/shards are missing."""


def train_config(s: StudentSpec) -> TrainConfig:
    return TrainConfig(
        objective=s.objective, label_weight=s.label_weight, method=s.method, lora_r=s.lora_r,
        lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout, lora_targets=list(s.lora_targets),
        learning_rate=s.learning_rate, weight_decay=s.weight_decay, warmup_ratio=s.warmup_ratio,
        batch_size=s.batch_size, grad_accum=s.grad_accum, epochs=s.epochs, max_steps=s.max_steps,
        packing=s.packing, max_length=s.max_length, seed=s.seed, kd_loss=s.kd_loss,
        kd_temperature=s.kd_temperature, kd_weight=s.kd_weight,
        checkpoint_every=s.checkpoint_every)


def _stage_shards(ws: Workspace, run_id: str, name: str, kind: str,
                  round_index: int | None) -> list[Shard]:
    stages = [s for s in ws.catalog.stages(run_id) if s.name == name and s.status == "completed"
              and (round_index is None or s.round_index == round_index)]
    return ws.shards(stages[-1], kind) if stages else []


def train_inputs(ws: Workspace, run_id: str, round_index: int) -> tuple[list[Shard], list[Shard]]:
    train = _stage_shards(ws, run_id, "curate", "train", round_index)
    if not train:
        raise TrainError(f"run {run_id} round {round_index}: no curated 'train' shards (run "
                         "generate and curate first, e.g. `stairs run CURRICULUM`)")
    evals = _stage_shards(ws, run_id, "ingest", "eval", None)
    return train, evals


def eval_rows(ws: Workspace, shards: list[Shard], limit: int | None) -> list[dict]:
    """Held-out rows in a stable order (by id), capped: the same rows for every model scored."""
    rows = sorted(ws.store.table(shards).to_pylist(), key=lambda r: r["id"]) if shards else []
    return rows[:limit] if limit else rows


def register_base(catalog, ref: str, run_id: str | None) -> Model:
    """One catalog row per base model file/folder (reused across runs)."""
    resolved = base_mod.resolve(ref, catalog)
    if resolved.catalog_id is not None:
        return catalog.get(Model, resolved.catalog_id)
    for m in catalog.models():
        stored = Path(m.path) if Path(m.path).is_absolute() else models_root() / m.path
        if stored == resolved.path:
            return m
    size = resolved.path.stat().st_size if resolved.path.is_file() else sum(
        p.stat().st_size for p in resolved.path.rglob("*") if p.is_file())
    return catalog.add(Model(run_id=run_id, name=ref, kind="base", format=resolved.kind,
                             path=str(resolved.path), bytes=size,
                             params_json=json.dumps({"ref": ref})))


def _already_scored(catalog, model_id: int, eval_ids: list[int], n: int, template_hash) -> bool:
    for m in catalog.metrics(model_id=model_id):
        meta = json.loads(m.meta_json)
        if (m.name == "eval_accuracy" and meta.get("eval_shards") == eval_ids
                and meta.get("n") == n and meta.get("template_hash") == template_hash):
            return True
    return False


@step(name="evaluate-model")
def evaluate_and_record(ws: Workspace, model_ref, model_id: int, rows: list[dict], spec: Curriculum,
                        *, run_id: str, stage_id: int, round_index: int,
                        eval_ids: list[int]) -> dict:
    result = ev.evaluate_model(model_ref, rows, spec.generate.template,
                               max_new_tokens=spec.student.eval_max_new_tokens,
                               prompts_dir=_prompts_dir(spec), catalog=ws.catalog)
    ev.record(ws.catalog, result, model_id=model_id, run_id=run_id, stage_id=stage_id,
              round_index=round_index, eval_shard_ids=eval_ids)
    return result


def model_ref(spec: Curriculum, ref: str) -> str:
    """Paths in a curriculum are relative to its file; names and catalog refs pass through."""
    if ref.startswith("catalog:") or ("/" not in ref and not ref.endswith(".gguf")):
        return ref
    return str(spec.resolve(ref))


def _prompts_dir(spec: Curriculum):
    return spec.resolve(spec.generate.prompts_dir) if spec.generate.prompts_dir else None


def _fingerprint(spec: Curriculum, train: list[Shard], evals: list[Shard]) -> str:
    h = hashlib.sha256(spec.fingerprint("student").encode())
    h.update(spec.generate.template.encode())
    for s in train + evals:
        h.update(s.checksum.encode())
    return h.hexdigest()[:16]


def _loss_logger(ws: Workspace, run_id: str, stage_id: int, round_index: int):
    artifact = None
    if in_flow_run():
        from prefect.artifacts import create_progress_artifact

        artifact = create_progress_artifact(0.0, description="student training steps")

    def log(step_no: int, record: dict) -> None:
        ws.catalog.log_metric("train_loss", record["loss"], run_id=run_id, stage_id=stage_id,
                              round_index=round_index, split="train", meta=record)
        if artifact is not None:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(artifact, progress=100.0 * step_no / log.total)

    log.total = 1
    return log


def _save(model, tokenizer, folder: Path, meta: dict) -> None:
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / base_mod.STAIRS_META).write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def train(spec: Curriculum, ws: Workspace, run_id: str, *, round_index: int = 0) -> dict:
    """Run (or reuse) the train stage of one round; returns the stage summary."""
    s = spec.student
    train_shards, eval_shards = train_inputs(ws, run_id, round_index)
    fingerprint = _fingerprint(spec, train_shards, eval_shards)
    done = ws.reuse(run_id, "train", fingerprint, round_index=round_index)
    if done is not None:
        return ws.summary(done)
    cfg = train_config(s)
    out_dir = models_root() / "students" / f"{run_id}-r{round_index}-{fingerprint}"
    with ws.stage(run_id, "train", round_index=round_index, fingerprint=fingerprint,
                  params={"student": s.model_dump(mode="json")}) as st:
        device = pick_device(s.device)
        base_ref = model_ref(spec, s.base)
        base_row = register_base(ws.catalog, base_ref, run_id)
        model, tokenizer, _ = base_mod.load(base_ref, catalog=ws.catalog, device=device)
        evals = eval_rows(ws, eval_shards, s.eval_rows)
        eval_ids = [sh.id for sh in eval_shards]
        if s.evaluate_base and evals:
            tmpl_hash = ev.as_template(spec.generate.template, _prompts_dir(spec)).content_hash
            if not _already_scored(ws.catalog, base_row.id, eval_ids, len(evals), tmpl_hash):
                base_result = evaluate_and_record(
                    ws, (model, tokenizer), base_row.id, evals, spec, run_id=run_id,
                    stage_id=st.id, round_index=round_index, eval_ids=eval_ids)
                st.summary["base_accuracy"] = base_result["accuracy"]
        if s.keep_layers:
            model = base_mod.keep_layers(model, s.keep_layers)
        rows = ws.store.table(train_shards).to_pylist()
        if rows and "order" in rows[0]:
            rows.sort(key=lambda r: (r["order"] is None, r["order"]))
        built = ex_mod.build(rows, tokenizer, s.objective, s.max_length, top_k=s.kd_top_k)
        teacher = None
        if s.objective == "kd" and s.kd_teacher:
            teacher, t_tok, _ = base_mod.load(model_ref(spec, s.kd_teacher), catalog=ws.catalog,
                                              device=device)
            if t_tok.get_vocab() != tokenizer.get_vocab():
                raise TrainError(f"student.kd_teacher {s.kd_teacher!r} does not share the "
                                 "student's tokenizer; white-box kd needs identical vocabularies")
        model = prepare(model, cfg)
        log = _loss_logger(ws, run_id, st.id, round_index)
        log.total = total_steps(batch_plan([sum(map(len, g)) for g in built.groups], cfg), cfg)
        result = fit(model, built.groups, cfg, pad_id=tokenizer.pad_token_id,
                     checkpoint_dir=out_dir / "checkpoints", teacher=teacher, device=device,
                     on_log=log, description=f"train r{round_index} {s.objective}")
        model = final_model(model)
        meta = {"parent": s.base, "parent_model_id": base_row.id, "objective": s.objective,
                "method": s.method, "keep_layers": s.keep_layers, "steps": result.steps,
                "train_shards": [sh.id for sh in train_shards], "run_id": run_id,
                "round": round_index, "config": cfg.__dict__}
        final = out_dir / "model"
        _save(model, tokenizer, final, meta)
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # the model supersedes them
        student = ws.catalog.add_model(Model(
            run_id=run_id, stage_id=st.id, round_index=round_index,
            name=f"{spec.name}-r{round_index}-{s.objective}", kind="student", format="hf",
            path=str(final.relative_to(models_root())),
            bytes=sum(p.stat().st_size for p in final.rglob("*") if p.is_file()),
            parent_id=base_row.id, params_json=json.dumps(meta, default=str)),
            trained_on=train_shards)
        st.summary.update({
            "objective": s.objective, "rows": len(rows), "examples":
            sum(len(g) for g in built.groups), "skipped": built.skipped, "steps": result.steps,
            "resumed_from": result.resumed_from, "first_loss": result.losses[0]["loss"],
            "final_loss": result.losses[-1]["loss"], "train_tokens_per_s": result.tokens_per_s,
            "student_model_id": student.id, "base_model_id": base_row.id})
        if evals:
            res = evaluate_and_record(ws, (model, tokenizer), student.id, evals, spec,
                                      run_id=run_id, stage_id=st.id, round_index=round_index,
                                      eval_ids=eval_ids)
            st.summary.update({"student_accuracy": res["accuracy"], "eval_rows": res["n"]})
        if in_flow_run():
            _artifacts(st.summary, result.losses)
    return st.summary


def _artifacts(summary: dict, history: list[dict]) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(history, key="student-loss", description="training loss per step")
    lines = [f"| {k} | {v} |" for k, v in summary.items()]
    create_markdown_artifact("| key | value |\n|---|---|\n" + "\n".join(lines),
                             key="student-summary", description="student training summary")


def latest_curated_run(ws: Workspace, spec: Curriculum) -> str:
    for run in ws.catalog.runs(200):
        if run.curriculum != spec.name:
            continue
        if any(s.name == "curate" and s.status == "completed" for s in ws.catalog.stages(run.id)):
            return run.id
    raise TrainError(f"no run of curriculum '{spec.name}' has curated rows yet; run "
                     "`stairs run` (or generate + curate) first, or pass --run")


@flow(name="train", log_prints=True, task_runner=task_runner())
def train_flow(params: RoundParams) -> dict:
    """Train the student on a run's curated rows (default: the curriculum's latest such run)."""
    spec = params.load()
    ws = Workspace.open()
    run_id = params.run_id or latest_curated_run(ws, spec)
    return {"run_id": run_id, **train(spec, ws, run_id, round_index=params.round_index)}


@flow(name="evaluate", log_prints=True, task_runner=task_runner())
def eval_flow(params: EvalParams) -> dict:
    """Score any model (base, student, GGUF, catalog:<id>) on the curriculum's held-out rows."""
    from flows.ingest import ingest

    spec, model, rows = params.load(), params.model, params.rows
    ws = Workspace.open()
    with ws.run_scope(None, lambda: ws.start_run(spec, "eval").id) as run:
        run_id = run.id
        ingest(spec, ws, run_id)  # reused when this corpus was ingested before
        eval_shards = _stage_shards(ws, run_id, "ingest", "eval", None)
        evals = eval_rows(ws, eval_shards, rows or spec.student.eval_rows)
        if not evals:
            raise TrainError(f"curriculum '{spec.name}' has no held-out eval rows")
        row = register_base(ws.catalog, model, run_id) if not model.startswith("catalog:") else \
            ws.catalog.get(Model, int(model.split(":", 1)[1]))
        with ws.stage(run_id, "evaluate", params={"model": model}) as st:
            result = evaluate_and_record(ws, model, row.id, evals, spec, run_id=run_id,
                                         stage_id=st.id, round_index=None,
                                         eval_ids=[s.id for s in eval_shards])
            st.summary.update({k: result[k] for k in ("accuracy", "correct", "n", "tokens_per_s",
                                                      "eval_loss", "format")})
    return {"run_id": run_id, "model_id": row.id, **result}
