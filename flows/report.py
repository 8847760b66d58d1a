"""The staircase report: one row per round (teacher, rows generated / kept, drop reasons, student
accuracy, quantized files), built from the catalog. The same rows feed `stairs run --json`,
`stairs report RUN`, the Prefect table artifact and the PNG/HTML plot written next to the run."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from flows.results import RESULTS
from flows.runinfo import stage_seconds
from flows.settings import stairs_home
from flows.workspace import Workspace

# A round's stages, in order; the report shows each one's result and wall seconds.
ROUND_STAGES = ("generate", "curate", "train", "quantize")


def _result(ws: Workspace, run_id: str, name: str, stage):
    """The typed result of a round's stage (empty when the stage has not finished)."""
    cls = RESULTS[name]
    return cls.of(run_id, ws.summary(stage)) if stage else cls(run_id=run_id)


def round_report(ws: Workspace, run_id: str) -> list[dict]:
    metrics = ws.catalog.metrics(run_id=run_id)
    teacher_scores = {m.round_index: m.value for m in metrics if m.name == "teacher_accuracy"}
    scoring_seconds = {m.round_index: m.value for m in metrics
                       if m.name == "teacher_score_seconds"}
    levels: dict[int, dict[str, dict[str, float]]] = {}
    for m in metrics:
        if m.name == "level_accuracy":
            meta = json.loads(m.meta_json)
            levels.setdefault(m.round_index, {}).setdefault(meta["level"], {})[meta["role"]] = \
                m.value
    promote = json.loads(ws.catalog.get_run(run_id).spec_json)["staircase"]["promote"]
    rows, previous_student = [], None
    for r in ws.catalog.rounds(run_id):
        stages = {name: ws.latest_stage(name, run_id=run_id, round_index=r.index)
                  for name in ROUND_STAGES}
        generated, curated, trained, quantized = (_result(ws, run_id, name, stages[name])
                                                  for name in ROUND_STAGES)
        promoted = quantized.artifact(promote)
        # A promoted student's score is measured once, as a student; it is the next teacher's.
        # A round taught by the curriculum's teacher again (schedule `teacher: curriculum`)
        # has no teacher model: its score is the one measured before round 0.
        teacher_acc = (teacher_scores[r.index] if r.index in teacher_scores
                       else teacher_scores.get(0) if r.teacher_model_id is None
                       else previous_student)
        rows.append({
            "round": r.index, "teacher": r.teacher, "teacher_accuracy": teacher_acc,
            "student_accuracy": promoted.accuracy if promoted else None,
            "student_hf_accuracy": trained.student_accuracy,
            "base_accuracy": trained.base_accuracy,
            "rows_generated": generated.rows_written or generated.requests,
            "rows_kept": curated.kept, "drops_by_reason": curated.drops_by_reason,
            "samples": generated.samples,
            # With staircase.schedule: what the round asked about and kept, per demo level, how
            # many kept rows came from rationalization, and accuracy per level.
            "rows_by_level": generated.source_rows_by_level,
            "kept_by_level": curated.kept_by_level,
            "rationalized": curated.rationalized,
            "rationalized_kept": curated.rationalized_kept,
            # Earlier rounds' kept rows this round's student trained on again (rehearse).
            "rows_rehearsed": trained.rehearsed_rows,
            "level_accuracy": levels.get(r.index, {}),
            "quantized": [{"type": t.quant or t.artifact, "format": t.format,
                           "bytes": round(t.size_mb * 2**20), "accuracy": t.accuracy,
                           "tokens_per_s": t.tokens_per_s, "model_id": t.model_id}
                          for t in quantized.table],
            "candidate": promote, "promoted": promote if r.gate_passed else None,
            "gate_passed": r.gate_passed,
            "gate_reason": r.gate_reason, "status": r.status,
            # Where the round's time went: the teacher's scoring on the held-out rows (before
            # round 0, or a round taught by the curriculum's teacher again; None in runs older
            # than the teacher_score_seconds metric), then each stage's start to finish.
            "seconds": {"teacher score": scoring_seconds.get(r.index),
                        **{name: stage_seconds(stages[name]) for name in ROUND_STAGES}},
        })
        previous_student = promoted.accuracy if (promoted and r.gate_passed) else teacher_acc
    return rows


def flat_round(r: dict) -> dict:
    """One round as flat columns (a Prefect table artifact shows no nested values): the
    per-level numbers become '<level> teacher', '<level> student', '<level> new/replay/kept'."""
    flat = {k: v for k, v in r.items() if k not in (
        "quantized", "drops_by_reason", "rows_by_level", "kept_by_level", "level_accuracy",
        "seconds")}
    flat["drops"] = ", ".join(f"{k}={v}" for k, v in r["drops_by_reason"].items())
    for name, secs in r.get("seconds", {}).items():
        flat[f"{name} s"] = secs
    for name, acc in r.get("level_accuracy", {}).items():
        flat[f"{name} teacher"] = acc.get("teacher")
        flat[f"{name} student"] = acc.get("student")
    for name, n in r.get("rows_by_level", {}).items():
        flat[f"{name} new/replay/kept"] = (f"{n.get('new', 0)}/{n.get('replay', 0)}/"
                                           f"{r.get('kept_by_level', {}).get(name, 0)}")
    return flat


def flat_rounds(rounds: list[dict]) -> list[dict]:
    """flat_round of every round, all with the same columns (a level a round did not ask about
    is an empty cell)."""
    flat = [flat_round(r) for r in rounds]
    columns = list(dict.fromkeys(k for row in flat for k in row))
    return [{k: row.get(k) for k in columns} for row in flat]


def level_names(rounds: list[dict]) -> list[str]:
    names: list[str] = []
    for r in rounds:
        names += [n for n in r.get("level_accuracy", {}) if n not in names]
    return names


def _levels_cell(r: dict) -> str:
    """'easy 40%>55%, hard 0%>10%' (teacher > student per level)."""
    return ", ".join(f"{n} {_fmt(a.get('teacher'))}>{_fmt(a.get('student'))}"
                     for n, a in r.get("level_accuracy", {}).items())


def _kept_cell(r: dict) -> str:
    kept = str(r["rows_kept"] or 0)
    if r.get("rationalized"):
        kept += f" ({r['rationalized_kept']}/{r['rationalized']} rationalized)"
    by_level = r.get("kept_by_level") or {}
    if by_level:
        kept += " " + " ".join(f"{k}:{v}" for k, v in by_level.items())
    if r.get("rows_rehearsed"):
        kept += f" (+{r['rows_rehearsed']} rehearsed)"
    return kept


def seconds_cell(r: dict) -> str:
    """'teacher score 28, generate 141, ...': the round's timed work that ran."""
    return ", ".join(f"{name} {secs:.0f}" for name, secs in r.get("seconds", {}).items()
                     if secs is not None)


def report_dir(run_id: str) -> Path:
    path = stairs_home() / "reports" / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def _fmt(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def write_report(ws: Workspace, run_id: str, rounds: list[dict]) -> dict[str, Path]:
    """accuracy.png (teacher vs promoted student per round, and the promoted file's size) and
    report.html (the plot and the table) under STAIRS_HOME/reports/<run_id>/."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers and CI
    import matplotlib.pyplot as plt

    out = report_dir(run_id)
    names = level_names(rounds)
    fig, axes = plt.subplots(1, 3 if names else 2, figsize=(13.5 if names else 9, 3.4))
    acc, size = axes[0], axes[1]
    xs = [r["round"] for r in rounds]
    if names:  # the climb: each level's held-out accuracy per round, teacher dashed
        climb = axes[2]
        for i, name in enumerate(names):
            color = f"C{i}"
            for role, style, marker in (("student", "-", "o"), ("teacher", "--", "x")):
                pts = [(r["round"], r["level_accuracy"].get(name, {}).get(role)) for r in rounds]
                pts = [(x, 100 * y) for x, y in pts if y is not None]
                if pts:
                    climb.plot(*zip(*pts), style, marker=marker, color=color,
                               label=f"{name} {role}")
        climb.set(xlabel="round", ylabel="held-out accuracy (%)",
                  title="per level (teacher: dashed, x)")
        climb.legend(fontsize=7)
        climb.set_xticks(xs or [0])
    for key, label in (("teacher_accuracy", "teacher"), ("student_accuracy", "student (quantized)")):
        ys = [r[key] for r in rounds]
        acc.plot([x for x, y in zip(xs, ys) if y is not None],
                 [100 * y for y in ys if y is not None], marker="o", label=label)
    acc.set(xlabel="round", ylabel="held-out accuracy (%)", title="accuracy per round")
    acc.legend()
    sizes = [max((q["bytes"] for q in r["quantized"] if q["type"] == r["candidate"]),
                 default=0) / 2**20 for r in rounds]
    size.bar(xs, sizes, color=["tab:green" if r["gate_passed"] else "tab:gray" for r in rounds])
    candidate = rounds[0]["candidate"] if rounds else ""
    size.set(xlabel="round", ylabel="MB",
             title=f"{candidate} student file (green: promoted)")
    for ax in (acc, size):
        ax.set_xticks(xs or [0])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    png = out / "accuracy.png"
    png.write_bytes(buf.getvalue())
    cells = "".join(
        f"<tr><td>{r['round']}</td><td>{html.escape(r['teacher'])}</td>"
        f"<td>{_fmt(r['teacher_accuracy'])}</td><td>{r['rows_generated'] or 0}</td>"
        f"<td>{html.escape(_kept_cell(r))}</td>"
        f"<td>{html.escape(', '.join(f'{k}={v}' for k, v in r['drops_by_reason'].items()))}</td>"
        f"<td>{_fmt(r['student_accuracy'])}</td>"
        f"<td>{html.escape(_levels_cell(r))}</td>"
        f"<td>{html.escape(str(r['promoted'] or '-'))}</td>"
        f"<td>{html.escape(r['gate_reason'] or '')}</td>"
        f"<td>{html.escape(seconds_cell(r))}</td></tr>" for r in rounds)
    page = (f"<!doctype html><meta charset=utf-8><title>stairs run {run_id}</title>"
            f"<h1>stairs run {run_id}</h1>"
            f"<img alt='accuracy per round' src='data:image/png;base64,"
            f"{base64.b64encode(buf.getvalue()).decode()}'>"
            "<table border=1 cellpadding=4><tr><th>round</th><th>teacher</th><th>teacher acc"
            "</th><th>generated</th><th>kept</th><th>dropped (why)</th><th>student acc</th>"
            "<th>per level (teacher&gt;student)</th><th>promoted</th>"
            f"<th>gate</th><th>seconds</th></tr>{cells}</table>")
    page_path = out / "report.html"
    page_path.write_text(page, encoding="utf-8")
    return {"png": png, "html": page_path}


def rich_table(rounds: list[dict]):
    from rich.table import Table

    climbing = bool(level_names(rounds))
    table = Table("round", "teacher", "teacher acc", "generated", "kept", "top drops",
                  "student acc", *(["per level (teacher>student)"] if climbing else []),
                  "files (MB, acc)", "gate", "seconds", title="staircase")
    for r in rounds:
        drops = ", ".join(f"{k}={v}" for k, v in list(r["drops_by_reason"].items())[:3])
        files = " ".join(f"{q['type']}:{q['bytes'] / 2**20:.0f}MB/{_fmt(q['accuracy'])}"
                         for q in r["quantized"])
        table.add_row(str(r["round"]), r["teacher"], _fmt(r["teacher_accuracy"]),
                      str(r["rows_generated"] or 0), _kept_cell(r), drops,
                      _fmt(r["student_accuracy"]), *([_levels_cell(r)] if climbing else []),
                      files,
                      ("promoted " + r["promoted"]) if r["gate_passed"] else
                      f"stop: {r['gate_reason'] or r['status']}", seconds_cell(r))
    return table
