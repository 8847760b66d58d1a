"""Train flow: fine-tune the student on a round's curated "train" shards, then score it and its
untrained base on the held-out eval rows.

    stairs train curricula/quickstart.yaml            # latest run of this curriculum with curated rows

The stage is resumable: checkpoints land in STAIRS_HOME/models/students/<run>-r<round>-<hash>/
checkpoints, and rerunning the same command after a crash continues from the newest one. The
trained model is saved as a plain safetensors folder (LoRA merged in) and registered in the
catalog with its parent base and the shards it was trained on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from prefect import flow

from flows.evaluate import earlier_accuracy, eval_template, evaluate_and_record, held_out_rows
from flows.evaluate.engines import TorchEngine
from flows.models import STAIRS_META, curriculum_ref, load, publish_model, register_base
from flows.orchestration import in_flow_run, task_runner
from flows.params import RoundParams
from flows.results import TrainResult
from flows.settings import models_root
from flows.spec import Curriculum, TeacherSpec
from flows.train import examples as ex_mod
from flows.train.checkpoint_mirror import CheckpointMirror
from flows.train.layers import keep_layers
from flows.train.rehearsal import earlier_shards, rehearsal_share, rehearsed_rows
from flows.train.trainer import (
    TrainConfig,
    batch_plan,
    final_model,
    fit,
    pick_device,
    prepare,
    total_steps,
)
from flows.workspace import Workspace
from storage.tables import Model, Shard


class TrainError(RuntimeError):
    """The train stage cannot start: says which run/round/shards are missing."""


def train_inputs(ws: Workspace, run_id: str, round_index: int) -> tuple[list[Shard], list[Shard]]:
    train = ws.stage_shards(run_id, "curate", "train", round_index=round_index)
    if not train:
        raise TrainError(f"run {run_id} round {round_index}: no curated 'train' shards (run "
                         "generate and curate first, e.g. `stairs run CURRICULUM`)")
    return train, ws.stage_shards(run_id, "ingest", "eval")


# When checkpoints are written changes nothing the student learns (resuming is exact), so a
# new interval reuses a finished student instead of training it again.
CHECKPOINT_KEYS = {"checkpoint_every", "checkpoint_minutes"}


def _fingerprint(spec: Curriculum, train: list[Shard], evals: list[Shard],
                 teacher: TeacherSpec, rehearse: float = 0.0) -> str:
    student = spec.student.model_dump(mode="json", exclude=CHECKPOINT_KEYS)
    h = hashlib.sha256(json.dumps(student, sort_keys=True).encode())
    h.update(spec.generate.template.encode())
    if rehearse:  # (0: the hash every run before the key had)
        h.update(f"rehearse={rehearse}".encode())
    if spec.student.objective == "on_policy":  # the teacher is asked during training
        h.update(teacher.model_dump_json().encode())
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
    (tmp / STAIRS_META).write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)


def train(spec: Curriculum, ws: Workspace, run_id: str, *, round_index: int = 0,
          teacher: TeacherSpec | None = None) -> TrainResult:
    """Run (or reuse) the train stage of one round. `teacher`: the round's teacher (default: the
    curriculum's), which objective on_policy asks during training."""
    s = spec.student
    tspec = teacher or spec.teacher
    train_shards, eval_shards = train_inputs(ws, run_id, round_index)
    rehearse = rehearsal_share(spec, round_index)
    earlier = earlier_shards(ws, run_id, round_index) if rehearse else []
    trained_on = train_shards + earlier  # what the student learns from: hash, lineage, meta
    fingerprint = _fingerprint(spec, trained_on, eval_shards, tspec, rehearse)
    done = ws.reuse(run_id, "train", fingerprint, round_index=round_index)
    if done is not None:
        return TrainResult.of(run_id, ws.summary(done))
    cfg = TrainConfig.of(s)
    out_dir = models_root() / "students" / f"{run_id}-r{round_index}-{fingerprint}"
    with ws.stage(run_id, "train", round_index=round_index, fingerprint=fingerprint,
                  params={"student": s.model_dump(mode="json")}) as st:
        device = pick_device(s.device)
        base_ref = curriculum_ref(spec, s.base)
        base_row = register_base(ws.catalog, base_ref, run_id)
        model, tokenizer, _ = load(base_ref, catalog=ws.catalog, device=device)
        evals, eval_ids = held_out_rows(ws, run_id, s.eval_rows) if eval_shards else ([], [])
        if s.evaluate_base and evals:
            tmpl_hash = eval_template(spec).content_hash
            # The base is scored once per eval rows and template; a later run reports that score.
            base_accuracy = earlier_accuracy(ws.catalog, base_row.id, eval_ids, len(evals),
                                             tmpl_hash, TorchEngine.name)
            if base_accuracy is None:
                base_accuracy = evaluate_and_record(
                    ws, TorchEngine(model, tokenizer), base_row.id, evals, spec, run_id=run_id,
                    stage_id=st.id, round_index=round_index, eval_ids=eval_ids).accuracy
            st.summary["base_accuracy"] = base_accuracy
        if s.keep_layers:
            model = keep_layers(model, s.keep_layers)
        rows = ws.store.table(train_shards).to_pylist()
        rehearsed = (rehearsed_rows(ws.store.table(earlier).to_pylist(), rehearse, s.seed)
                     if earlier else [])
        rows += rehearsed
        if rows and "order" in rows[0]:
            rows.sort(key=lambda r: (r["order"] is None, r["order"]))
        # No more candidate slots than the teacher returned (teacher.top_logprobs), if it did.
        top_k = min(s.kd_top_k, spec.teacher.top_logprobs or s.kd_top_k)
        built = ex_mod.build(rows, tokenizer, s.objective, s.max_length, top_k=top_k)
        sparse = sum(1 for g in built.groups if g[0].topk_ids)
        if s.objective == "kd" and not s.kd_teacher and not sparse:
            raise TrainError("objective 'kd' without student.kd_teacher needs rows with teacher "
                             "logprobs, and none of the curated rows has any (was "
                             "teacher.top_logprobs > 0 when they were generated?)")
        teacher = None
        if s.objective == "kd" and s.kd_teacher:
            teacher, t_tok, _ = load(curriculum_ref(spec, s.kd_teacher), catalog=ws.catalog,
                                     device=device)
            if t_tok.get_vocab() != tokenizer.get_vocab():
                raise TrainError(f"student.kd_teacher {s.kd_teacher!r} does not share the "
                                 "student's tokenizer; white-box kd needs identical vocabularies")
        model = prepare(model, cfg)
        log = _loss_logger(ws, run_id, st.id, round_index)
        log.total = total_steps(batch_plan([sum(map(len, g)) for g in built.groups], cfg,
                                           built.stages), cfg)
        mirror = CheckpointMirror.of(out_dir / "checkpoints")  # None: no shared model store
        if mirror is not None:
            mirror.restore()
        with served_teacher(spec, tspec, tokenizer, built, rows, s.objective) as sampler:
            result = fit(model, built.groups, cfg, pad_id=tokenizer.pad_token_id,
                         stages=built.stages, checkpoint_dir=out_dir / "checkpoints",
                         teacher=teacher, sampler=sampler, device=device,
                         on_log=log, description=f"train r{round_index} {s.objective}",
                         on_checkpoint=mirror.sync if mirror is not None else None)
        if sampler is not None:
            st.summary.update({"teacher_requests": sampler.scorer.requests,
                               "teacher_tokens": sampler.scorer.prompt_tokens,
                               "on_policy_samples": sampler.samples,
                               "misaligned_samples": sampler.misaligned})
        model = final_model(model)
        meta = {"parent": s.base, "parent_model_id": base_row.id, "objective": s.objective,
                "method": s.method, "keep_layers": s.keep_layers, "steps": result.steps,
                "train_shards": [sh.id for sh in trained_on], "run_id": run_id,
                "round": round_index, "config": cfg.model_dump(mode="json"),
                # The order it trained in: which curriculum stage each run of steps came from.
                "order": s.order, "replay": s.replay, "stage_runs": result.stage_runs}
        final = out_dir / "model"
        _save(model, tokenizer, final, meta)
        publish_model(final)  # onto the shared model store, when there is one
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)  # the model supersedes them
        if mirror is not None:
            mirror.clear()
        student = ws.catalog.add_model(Model(
            run_id=run_id, stage_id=st.id, round_index=round_index,
            name=f"{spec.name}-r{round_index}-{s.objective}", kind="student", format="hf",
            path=str(final.relative_to(models_root())),
            bytes=sum(p.stat().st_size for p in final.rglob("*") if p.is_file()),
            parent_id=base_row.id, params_json=json.dumps(meta, default=str)),
            trained_on=trained_on)
        st.summary.update({
            "round": round_index, "objective": s.objective, "rows": len(rows),
            "rehearsed_rows": len(rehearsed), "examples":
            sum(len(g) for g in built.groups), "skipped": built.skipped, "steps": result.steps,
            "examples_by_target": examples_by_target(built.groups),
            "resumed_from": result.resumed_from, "order": s.order, "kd_rows": sparse,
            "stage_runs": result.stage_runs, "first_loss": result.losses[0]["loss"],
            "final_loss": result.losses[-1]["loss"], "loss_terms": loss_terms(result.losses),
            "train_tokens_per_s": result.tokens_per_s, "precision": result.precision,
            "student_model_id": student.id, "base_model_id": base_row.id})
        if evals:
            res = evaluate_and_record(ws, TorchEngine(model, tokenizer), student.id, evals, spec,
                                      run_id=run_id, stage_id=st.id, round_index=round_index,
                                      eval_ids=eval_ids)
            st.summary.update({"student_accuracy": res.accuracy, "eval_rows": res.n})
        if in_flow_run():
            _artifacts(st.summary, result.losses)
    return TrainResult.of(run_id, st.summary)


def examples_by_target(groups) -> dict[str, int]:
    names = {ex_mod.TASK_RATIONALE: "rationale", ex_mod.TASK_LABEL: "label",
             ex_mod.TASK_TEXT: "text"}
    counts: dict[str, int] = {}
    for group in groups:
        for e in group:
            counts[names[e.task]] = counts.get(names[e.task], 0) + 1
    return counts


@contextmanager
def served_teacher(spec: Curriculum, tspec: TeacherSpec, tokenizer, built, rows: list[dict],
                   objective: str):
    """For objective on_policy: the round's teacher served (llama.cpp's server started here, or
    the remote endpoint) and an OnPolicy sampler scoring through it; None otherwise."""
    if objective != "on_policy":
        yield None
        return
    from flows.models import resolve_model
    from flows.teachers import make_teacher, running
    from flows.teachers.openai_compat import api_key
    from flows.train.onpolicy import CompletionsScorer, GGUFScorer, OnPolicy

    s = spec.student
    # Each row's prompt: its example's tokens up to the first target token; the teacher's: the
    # messages it was sent when it taught (flows/train/onpolicy.py says why).
    prompts = [g[0].input_ids[:next(i for i, t in enumerate(g[0].labels) if t >= 0)]
               for g in built.groups]
    sent = {str(r.get("id", "")): json.loads(r["messages"]) for r in rows}
    teacher_prompts = [tokenizer.apply_chat_template(sent[g[0].row_id], tokenize=False,
                                                     add_generation_prompt=True)
                       for g in built.groups]
    def sampler(scorer):
        return OnPolicy(tokenizer, scorer, prompts, teacher_prompts,
                        max_new_tokens=s.on_policy_max_tokens,
                        temperature=s.on_policy_temperature, k=s.kd_top_k)

    if s.on_policy_scorer == "in_process":
        scorer = GGUFScorer(resolve_model(tspec.model, base_dir=spec.base_dir), s.kd_top_k)
        try:
            yield sampler(scorer)
        finally:
            scorer.close()
        return
    with running(make_teacher(tspec, base_dir=spec.base_dir, endpoint=True)) as teacher:
        scorer = CompletionsScorer(teacher.base_url or "https://api.openai.com/v1", tspec.model,
                                   api_key(tspec.api_key_env), s.kd_top_k, tspec.timeout)
        try:
            yield sampler(scorer)
        finally:
            scorer.close()


def loss_terms(history: list[dict]) -> dict[str, list[float]]:
    """Each term of the objective's loss (ce, kd, label_loss, ...) at the first and the last
    step: what the objective optimised, and whether it went down."""
    skip = ("step", "lr", "stage", "loss")
    return {k: [history[0][k], history[-1][k]] for k in history[0] if k not in skip}


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
def train_flow(params: RoundParams) -> TrainResult:
    """Train the student on a run's curated rows (default: the curriculum's latest such run)."""
    spec = params.load()
    ws = Workspace.open()
    run_id = params.run_id or latest_curated_run(ws, spec)
    with ws.run_scope(run_id, lambda: run_id):  # the run's lock: one process in it at a time
        return train(spec, ws, run_id, round_index=params.round_index)
