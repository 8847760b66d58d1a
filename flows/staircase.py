"""Staircase flow: the main job. Ingest once, then per round generate → curate → train →
quantize → evaluate → promote: each round's quantized student, served by llama.cpp, becomes the
next round's teacher if it passes the promotion gate.

    stairs run curricula/quickstart.yaml

A run stopped midway is resumed by running the same command again: every stage reuses identical
finished work (same fingerprint), so the run restarts at the first unfinished stage of the round
it stopped in. When it ends (completed or not) the report is printed, written as PNG and HTML
next to the run, and published as Prefect artifacts.
"""

from __future__ import annotations

import json
import time

from prefect import flow

from flows import artifacts
from flows.climb import by_level, ids_digest, with_sampling
from flows.curate import curate
from flows.generate import generate
from flows.ingest import ingest
from flows.orchestration import step, task_runner
from flows.params import StaircaseParams
from flows.quantize import quantize
from flows.report import flat_rounds, write_report
from flows.runinfo import run_details
from flows.spec import Curriculum, TeacherSpec
from flows.train import train
from flows.workspace import Workspace
from storage.tables import Round, utcnow

LOCAL_BACKENDS = ("llamacpp", "transformers")


def describe(teacher: TeacherSpec) -> str:
    return f"{teacher.backend}:{teacher.model}"


@step(name="score-teacher")
def score_teacher(spec: Curriculum, ws: Workspace, run_id: str, teacher: TeacherSpec,
                  round_index: int) -> float | None:
    """The round-0 teacher's held-out accuracy, asked exactly as it teaches (with the template's
    worked examples), on the rows every quantized student is scored on, by the same function.
    A local teacher is opened in-process like any student file; any other (an OpenAI-compatible
    endpoint, vLLM) is asked through its own backend on the first staircase.teacher_eval_rows of
    those rows, through the response cache and inside the teacher's budget. None when
    staircase.score_teacher is false or the endpoint left rows unanswered."""
    for m in ws.catalog.metrics(run_id=run_id):
        if m.name == "teacher_accuracy" and m.round_index == round_index:
            return m.value  # resumed run: already measured
    if not spec.staircase.score_teacher:
        return None
    from flows.evaluate import eval_template, evaluate_model, held_out_rows
    from flows.evaluate.engines import EndpointEngine
    from flows.models import curriculum_ref

    q = spec.quantization
    local = teacher.backend in LOCAL_BACKENDS
    started = time.perf_counter()
    rows, _ = held_out_rows(ws, run_id, q.eval_rows if local else min(
        q.eval_rows, spec.staircase.teacher_eval_rows))
    engine = (curriculum_ref(spec, teacher.model) if local
              else EndpointEngine(teacher, ws.catalog, base_dir=spec.base_dir))
    try:
        result = evaluate_model(engine, rows, eval_template(spec),
                                max_new_tokens=q.max_new_tokens, catalog=ws.catalog,
                                few_shot=teacher.few_shot)
    finally:
        if not local:
            engine.close()
    meta = {"teacher": describe(teacher), "eval_rows": result.n}
    if not local:
        spent = {"requests": engine.sent, "tokens": engine.prompt_tokens + engine.completion_tokens,
                 "cache_hits": engine.cache_hits, "unanswered": engine.unanswered}
        # The generate stage's budget counts what scoring spent (flows/generate/dispatch.py).
        ws.catalog.log_metric("teacher_score_requests", spent["requests"], run_id=run_id,
                              round_index=round_index, meta=meta)
        ws.catalog.log_metric("teacher_score_tokens", spent["tokens"], run_id=run_id,
                              round_index=round_index, meta=meta)
        print(f"teacher {describe(teacher)} scored through its endpoint on {result.n} rows: "
              f"{spent['requests']} requests sent, {spent['cache_hits']} from the cache, "
              f"{spent['tokens']} tokens")
        if engine.unanswered:
            print(f"teacher score left out: {engine.unanswered} of {result.n} rows unanswered "
                  "(budget reached or requests failed)")
            return None
    ws.catalog.log_metric("teacher_accuracy", result.accuracy, run_id=run_id,
                          round_index=round_index, split="eval", meta=meta)
    # Not a stage of its own, so the report's per-round seconds take it from here.
    ws.catalog.log_metric("teacher_score_seconds", round(time.perf_counter() - started, 1),
                          run_id=run_id, round_index=round_index, meta=meta)
    return result.accuracy


def _level_rows(spec: Curriculum, ws: Workspace, run_id: str) -> dict[str, list[dict]]:
    """The first staircase.level_eval_rows held-out rows (by id) of each demo level, easiest
    level first: fixed at ingest, so every round's teacher and student are scored on the same
    rows per level."""
    from flows.evaluate import held_out_rows

    rows, _ = held_out_rows(ws, run_id, None)
    groups = by_level(rows)
    n = spec.staircase.level_eval_rows
    return {name: groups[name][:n] for name in spec.corpus.demo.levels if name in groups}


def logged_levels(ws: Workspace, run_id: str, round_index: int, role: str,
                  model: str) -> dict[str, float]:
    """The per-level scores already logged for this round, role and model (a resumed run)."""
    out = {}
    for m in ws.catalog.metrics(run_id=run_id):
        meta = json.loads(m.meta_json) if m.name == "level_accuracy" else {}
        if (m.round_index == round_index and meta.get("role") == role
                and meta.get("model") == model):
            out[meta["level"]] = m.value
    return out


def log_levels(ws: Workspace, run_id: str, round_index: int, role: str, scores: dict,
               level_rows: dict[str, list[dict]], **meta) -> None:
    for name, acc in scores.items():
        ws.catalog.log_metric("level_accuracy", acc, run_id=run_id, round_index=round_index,
                              split="eval", meta={"level": name, "role": role,
                                                  "rows": len(level_rows[name]),
                                                  "eval_ids": ids_digest(level_rows[name]),
                                                  **meta})


@step(name="score-levels")
def score_levels(spec: Curriculum, ws: Workspace, run_id: str, round_index: int, role: str,
                 model: str | TeacherSpec) -> dict[str, float]:
    """Accuracy per demo level on each level's fixed held-out rows (staircase.level_eval_rows)
    of a round's teacher (a TeacherSpec, asked as it teaches) or its promoted candidate (a
    model reference, asked zero-shot like every student); logged as `level_accuracy` metrics
    (meta: level, role, the rows' id digest). A resumed run reads them back."""
    name = describe(model) if isinstance(model, TeacherSpec) else str(model)
    done = logged_levels(ws, run_id, round_index, role, name)
    level_rows = _level_rows(spec, ws, run_id)
    if done and set(done) == set(level_rows):
        return done
    from flows.evaluate import eval_template, evaluate_model
    from flows.evaluate.engines import EndpointEngine, open_engine
    from flows.models import curriculum_ref

    few_shot, ref = False, model
    if isinstance(model, TeacherSpec):
        few_shot, ref = model.few_shot, curriculum_ref(spec, model.model)
    # One engine for every level: the model is loaded once.
    engine = (EndpointEngine(model, ws.catalog, base_dir=spec.base_dir)
              if isinstance(model, TeacherSpec) and model.backend not in LOCAL_BACKENDS
              else open_engine(ref, catalog=ws.catalog, threads=spec.quantization.threads))
    scores = {}
    try:
        for level, rows in level_rows.items():
            scores[level] = evaluate_model(engine, rows, eval_template(spec),
                                          max_new_tokens=spec.quantization.max_new_tokens,
                                          catalog=ws.catalog, few_shot=few_shot).accuracy
    finally:
        engine.close()
    log_levels(ws, run_id, round_index, role, scores, level_rows, model=name)
    return scores


def round_teacher(spec: Curriculum, index: int, promoted: TeacherSpec,
                  samples: int | None = None, temperature: float | None = None) -> TeacherSpec:
    """Who teaches round `index` and how it samples: the schedule's teacher choice, samples
    and temperature, then a retry's `samples` and `temperature` over them."""
    entry = spec.staircase.round_entry(index)
    teacher = spec.teacher if entry is not None and entry.teacher == "curriculum" else promoted
    teacher = with_sampling(teacher, entry)
    changes = {}
    if samples is not None:
        changes["samples"] = samples
    if temperature is not None:
        changes["temperature"] = temperature
    return teacher.model_copy(update=changes) if changes else teacher


def gate(spec: Curriculum, student_acc: float | None, teacher_acc: float | None,
         kl: float | None = None,
         level: tuple[str, float | None, float | None] | None = None) -> tuple[bool, str]:
    """Whether the promoted file passes, and why: every condition the curriculum sets (beat the
    teacher overall or on a level, min_accuracy, max_kl) must hold; a condition that cannot be
    checked fails. `level`: (name, student's accuracy on it, teacher's)."""
    s = spec.staircase
    if student_acc is None:
        return False, f"no '{s.promote}' artifact was measured (check quantization.gguf_types)"
    checks: list[tuple[bool, str]] = []
    if s.gate == "beat_teacher_on_level":
        name, mine, theirs = level or (s.gate_level or "?", None, None)
        if mine is None or theirs is None:
            checks.append((False, f"level {name!r}: {'student' if mine is None else 'teacher'} "
                                  "not scored on it"))
        else:
            ok = mine > theirs + s.gate_margin
            margin = f" {s.gate_margin:+.3f}" if s.gate_margin else ""
            checks.append((ok, f"level {name}: {s.promote} student {mine:.3f} "
                               f"{'>' if ok else '<='} teacher {theirs:.3f}{margin}"))
    if s.gate == "beat_teacher":
        if teacher_acc is not None:
            checks.append((student_acc > teacher_acc,
                           f"{s.promote} student {student_acc:.3f} "
                           f"{'>' if student_acc > teacher_acc else '<='} teacher "
                           f"{teacher_acc:.3f}"))
        elif s.min_accuracy is None:
            checks.append((False, "teacher not scored and no staircase.min_accuracy to compare "
                                  "with"))
        else:
            checks.append((True, "teacher not scored"))
    if s.min_accuracy is not None:
        ok = student_acc >= s.min_accuracy
        checks.append((ok, f"{s.promote} student {student_acc:.3f} {'>=' if ok else '<'} "
                           f"min_accuracy {s.min_accuracy:.3f}"))
    if s.max_kl is not None:
        if kl is None:
            checks.append((False, f"{s.promote} fidelity (KL to the float file) not measured"))
        else:
            checks.append((kl <= s.max_kl, f"KL to {spec.quantization.gguf_float} {kl:.4f} "
                           f"{'<=' if kl <= s.max_kl else '>'} max_kl {s.max_kl}"))
    return all(ok for ok, _ in checks), "; ".join(why for _, why in checks)


def _round_row(ws: Workspace, run_id: str, index: int, teacher: TeacherSpec,
               teacher_model_id: int | None) -> Round:
    for r in ws.catalog.rounds(run_id):
        if r.index == index:
            return r
    return ws.catalog.add(Round(run_id=run_id, index=index, teacher=describe(teacher),
                                teacher_model_id=teacher_model_id))


def _finish_round(ws: Workspace, round_id: int, **fields) -> None:
    with ws.catalog.session() as s:
        row = s.get(Round, round_id)
        for k, v in fields.items():
            setattr(row, k, v)
        row.finished_at = utcnow()
        s.commit()


def run_round(spec: Curriculum, ws: Workspace, run_id: str, index: int, teacher: TeacherSpec,
              teacher_model_id: int | None, teacher_acc: float | None,
              teacher_levels: dict[str, float] | None = None) -> dict:
    """One step of the staircase; returns what the next round needs. `teacher_levels`: the
    teacher's accuracy per demo level (with a schedule)."""
    rnd = _round_row(ws, run_id, index, teacher, teacher_model_id)
    entry = spec.staircase.round_entry(index)
    generated = generate(spec, ws, run_id, round_index=index, teacher=teacher)
    print(f"round {index} generate: {generated.rows_written} rows, "
          f"{generated.sent} requests sent, {generated.cache_hits} answered from the cache")
    if not generated.complete:
        why = "budget reached" if generated.budget_exhausted else (
            f"{generated.unanswered} requests unanswered")
        raise RuntimeError(f"round {index}: generation stopped before the end ({why}); "
                           "run the same command again to resume")
    curated = curate(spec, ws, run_id, round_index=index)
    drops = ", ".join(f"{k} {v}" for k, v in curated.drops_by_reason.items())
    print(f"round {index} curate: kept {curated.kept} of {curated.generated}"
          + (f" (dropped: {drops})" if drops else ""))
    if not curated.kept:
        reason = ("curation kept no rows to train on (drops: " + ", ".join(
            f"{k}={v}" for k, v in curated.drops_by_reason.items()) + ")")
        _finish_round(ws, rnd.id, status="completed", gate_passed=False, gate_reason=reason)
        print(f"round {index}: {reason}; the staircase stops here")
        return {"passed": False, "promoted": None, "student_acc": None, "reason": reason,
                "levels": {}}
    if curated.rationalized:
        print(f"round {index} rationalized: {curated.rationalized_kept} of "
              f"{curated.rationalized} hinted rows kept")
    trained = train(spec, ws, run_id, round_index=index, teacher=teacher)
    final_loss = trained.final_loss if trained.final_loss is not None else float("nan")
    scored = (f", student {_pct(trained.student_accuracy)} on {trained.eval_rows} eval rows"
              if trained.eval_rows else "")
    print(f"round {index} train: {trained.steps} steps, final loss {final_loss:.4f}{scored}")
    quantized = quantize(spec, ws, run_id, round_index=index)
    print(f"round {index} quantize: " + ", ".join(
        f"{r.quant} {r.size_mb:.0f} MB {_pct(r.accuracy)}" for r in quantized.table))
    promoted = quantized.artifact(spec.staircase.promote)
    student_acc = promoted.accuracy if promoted else None
    levels, level = {}, None
    if entry is not None and promoted is not None:
        levels = score_levels(spec, ws, run_id, index, "student", f"catalog:{promoted.model_id}")
        print(f"round {index} levels: " + ", ".join(
            f"{n} student {_pct(a)} / teacher {_pct((teacher_levels or {}).get(n))}"
            for n, a in levels.items()))
        name = spec.staircase.gate_level or entry.levels[-1]
        level = (name, levels.get(name), (teacher_levels or {}).get(name))
    passed, reason = gate(spec, student_acc, teacher_acc,
                          promoted.kl_divergence if promoted else None, level)
    _finish_round(ws, rnd.id, status="completed", gate_passed=passed, gate_reason=reason,
                  student_model_id=trained.student_model_id or quantized.student_id,
                  promoted_model_id=promoted.model_id if (promoted and passed) else None)
    print(f"round {index}: teacher {describe(teacher)} ({_pct(teacher_acc)}), student "
          f"{spec.staircase.promote} {_pct(student_acc)}: "
          f"{'promoted' if passed else 'not promoted'} ({reason})")
    return {"passed": passed, "promoted": promoted, "student_acc": student_acc,
            "reason": reason, "levels": levels, "student_model_id": trained.student_model_id}


def _pct(x: float | None) -> str:
    return "not scored" if x is None else f"{100 * x:.1f}%"


def staircase(spec: Curriculum, ws: Workspace, run_id: str) -> None:
    ingest(spec, ws, run_id)
    sc = spec.staircase
    promoted, promoted_id = spec.teacher, None
    first_acc = score_teacher(spec, ws, run_id, spec.teacher, 0)
    promoted_acc, promoted_levels = first_acc, None
    round_spec = spec  # with student_from: promoted, the next round's student base changes
    for index in range(sc.rounds):
        teacher = round_teacher(spec, index, promoted)
        own = teacher.model == spec.teacher.model and teacher.backend == spec.teacher.backend
        teacher_model_id = None if own else promoted_id
        teacher_acc = first_acc if own else promoted_acc
        levels = None
        if sc.schedule:
            if own:  # the curriculum's teacher: scored on every level's held-out rows
                levels = score_levels(spec, ws, run_id, index, "teacher", spec.teacher)
            else:  # the promoted student: measured as last round's student, on the same rows
                levels = promoted_levels
                if not logged_levels(ws, run_id, index, "teacher", describe(teacher)):
                    log_levels(ws, run_id, index, "teacher", levels,
                               _level_rows(spec, ws, run_id),
                               model=describe(teacher), measured_in_round=index - 1)
        result = run_round(round_spec, ws, run_id, index, teacher, teacher_model_id,
                           teacher_acc, levels)
        if not result["passed"] and sc.retry_samples:
            first = result["reason"]
            retried = round_teacher(spec, index, promoted, samples=sc.retry_samples,
                                    temperature=sc.retry_temperature)
            print(f"round {index}: gate failed ({first}); retrying once with "
                  f"{sc.retry_samples} samples per problem")
            result = run_round(round_spec, ws, run_id, index, retried, teacher_model_id,
                               teacher_acc, levels)
            note = (f"retried with {sc.retry_samples} samples: {result['reason']}; "
                    f"first try: {first}")
            rnd = next(r for r in ws.catalog.rounds(run_id) if r.index == index)
            _finish_round(ws, rnd.id, gate_reason=note)
        if not result["passed"]:
            break  # the gate's reason is on the round row
        promoted_id = result["promoted"].model_id
        # The promoted file teaches next, served by llama.cpp like any GGUF teacher, and asked
        # without worked examples, the way it was trained.
        promoted = spec.teacher.model_copy(update={
            "backend": "llamacpp", "model": f"catalog:{promoted_id}", "base_url": None,
            "api_key_env": None, "few_shot": False})
        promoted_acc, promoted_levels = result["student_acc"], result["levels"]
        if sc.student_from == "promoted" and result["student_model_id"] is not None:
            round_spec = spec.model_copy(update={"student": spec.student.model_copy(
                update={"base": f"catalog:{result['student_model_id']}"})})


@flow(name="staircase", log_prints=True, task_runner=task_runner())
def staircase_flow(params: StaircaseParams) -> dict:
    """Run (or resume) the whole staircase a curriculum describes."""
    spec = params.load()
    ws = Workspace.open()
    run_id = ws.resume_or_start(spec, "run", new=params.new)
    print(f"run {run_id}: curriculum {spec.name}, {spec.staircase.rounds} round(s)")
    try:
        with ws.run_scope(None, lambda: run_id):
            staircase(spec, ws, run_id)
    finally:
        _publish(ws, run_id)  # completed or not: the report of what was done
    return {"run_id": run_id}


def _publish(ws: Workspace, run_id: str) -> None:
    details = run_details(ws, run_id)
    rounds = details["rounds"]
    paths = write_report(ws, run_id, rounds)
    print(f"report: {paths['html']}")
    artifacts.publish_run_report(details)
    if rounds:
        artifacts.table(artifacts.artifact_key("stairs", spec_name(details), "rounds"),
                        flat_rounds(rounds), description=f"Rounds of run {run_id}")


def spec_name(details: dict) -> str:
    return details["run"]["curriculum"]
