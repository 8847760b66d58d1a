"""What `stairs runs` and `stairs show` print: plain dicts built from the catalog, so the JSON
output, the terminal tables and the Prefect artifacts all say the same thing."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from flows.workspace import ABANDONED, Workspace
from storage.tables import Run


def _iso(dt) -> str | None:
    return dt.isoformat() if dt else None


def stage_seconds(stage) -> float | None:
    """Wall seconds a stage took (the attempt that is recorded; a reused stage took none in this
    run), None while it runs."""
    if stage is None or stage.started_at is None or stage.finished_at is None:
        return None
    return round((stage.finished_at - stage.started_at).total_seconds(), 1)


def run_row(run: Run) -> dict:
    return {"id": run.id, "curriculum": run.curriculum, "command": run.command,
            "status": run.status, "created_at": _iso(run.created_at),
            "finished_at": _iso(run.finished_at), "error": run.error}


def run_details(ws: Workspace, run_id: str) -> dict:
    run = ws.catalog.get(Run, run_id)
    if run is None:
        raise KeyError(run_id)
    stages, totals = [], defaultdict(lambda: {"count": 0, "rows": 0, "bytes": 0})
    rejects: Counter = Counter()
    counted: set[str] = set()
    for st in ws.catalog.stages(run_id):
        summary = json.loads(st.summary_json or "{}")
        shards = ws.shards(st)
        for sh in shards:
            if sh.path in counted:
                continue  # a resumed stage adopts its earlier attempts' files: count each once
            counted.add(sh.path)
            t = totals[sh.kind]
            t["count"] += 1
            t["rows"] += sh.rows
            t["bytes"] += sh.bytes
        # Every stage that drops rows reports them under one of these keys.
        for key in ("rejects_by_reason", "drops_by_reason"):
            rejects.update(summary.get(key, {}))
        stages.append({
            "id": st.id, "name": st.name, "round": st.round_index, "status": st.status,
            "reused_from": st.reused_from_id, "started_at": _iso(st.started_at),
            "finished_at": _iso(st.finished_at), "seconds": stage_seconds(st),
            "error": st.error, "summary": summary,
            "shards": [{"id": sh.id, "kind": sh.kind, "rows": sh.rows, "bytes": sh.bytes,
                        "path": str(ws.store.path(sh))} for sh in shards],
        })
    models = [{"id": m.id, "name": m.name, "kind": m.kind, "format": m.format,
               "quant": m.quant, "bytes": m.bytes, "path": m.path, "parent_id": m.parent_id,
               "round": m.round_index} for m in ws.catalog.models(run_id)]
    metrics = [{"name": m.name, "value": m.value, "model_id": m.model_id, "round": m.round_index,
                "split": m.split, "meta": json.loads(m.meta_json)}
               for m in ws.catalog.metrics(run_id=run_id)]
    from flows.report import round_report

    rounds = round_report(ws, run_id)
    row = run_row(run)
    if run.status == "running" and not ws.live(run):  # could not be marked failed (read-only)
        row["error"] = f"no live process holds this run: it {ABANDONED}"
    return {"run": row, "stages": stages, "shards": dict(totals),
            "rejects_by_reason": dict(rejects.most_common()), "models": models,
            "metrics": metrics, "rounds": rounds}
