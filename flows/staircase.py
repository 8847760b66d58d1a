"""Staircase flow: the main job. Ingest once, then per round generate → curate → train →
quantize → evaluate → promote, each quantized student becoming the next round's teacher.

    stairs run curricula/quickstart.yaml

A run stopped midway is resumed by running the same command again: finished stages (same
fingerprint, same run) are not redone.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows import spec as spec_mod
from flows.generate import generate
from flows.ingest import ingest
from flows.workspace import Workspace


def resume_or_start(ws: Workspace, spec, *, new: bool) -> str:
    if not new:
        previous = ws.catalog.latest_run(spec.fingerprint())
        if previous is not None and previous.status != "completed" and previous.command == "run":
            return previous.id
    return ws.start_run(spec, "run").id


@flow(name="staircase", log_prints=True)
def staircase_flow(curriculum: str, new: bool = False) -> dict:
    spec = spec_mod.load(Path(curriculum))
    ws = Workspace.open()
    run_id = resume_or_start(ws, spec, new=new)
    try:
        ingest(spec, ws, run_id)
        # Round 0 is taught by the curriculum's teacher; later rounds by the promoted student
        # (passed as `teacher=`) once the train/quantize/promote stages exist.
        generate(spec, ws, run_id, round_index=0)
    except BaseException as e:
        status = "stopped" if isinstance(e, KeyboardInterrupt) else "failed"
        ws.catalog.finish_run(run_id, status, error=f"{type(e).__name__}: {e}")
        raise
    ws.catalog.finish_run(run_id)
    return {"run_id": run_id}
