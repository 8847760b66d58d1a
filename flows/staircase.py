"""Staircase flow: the main job. Ingest once, then per round generate → curate → train →
quantize → evaluate → promote, each quantized student becoming the next round's teacher.

    stairs run curricula/quickstart.yaml

A run stopped midway is resumed by running the same command again: finished stages (same
fingerprint, same run) are not redone. When it ends (completed or not) the run's report is
published as a markdown and a table artifact.
"""

from __future__ import annotations

from prefect import flow

from flows import artifacts
from flows.generate import generate
from flows.ingest import ingest
from flows.orchestration import task_runner
from flows.params import StaircaseParams
from flows.runinfo import run_details
from flows.workspace import Workspace


def resume_or_start(ws: Workspace, spec, *, new: bool) -> str:
    if not new:
        previous = ws.catalog.latest_run(spec.fingerprint())
        if previous is not None and previous.status != "completed" and previous.command == "run":
            return previous.id
    return ws.start_run(spec, "run").id


@flow(name="staircase", log_prints=True, task_runner=task_runner())
def staircase_flow(params: StaircaseParams) -> dict:
    """Run (or resume) the whole staircase a curriculum describes."""
    spec = params.load()
    ws = Workspace.open()
    run_id = resume_or_start(ws, spec, new=params.new)
    print(f"run {run_id}: curriculum {spec.name}, {spec.staircase.rounds} round(s)")
    try:
        ingest(spec, ws, run_id)
        # Round 0 is taught by the curriculum's teacher; later rounds by the promoted student
        # (passed as `teacher=`) once the train/quantize/promote stages exist.
        generate(spec, ws, run_id, round_index=0)
    except BaseException as e:
        status = "stopped" if isinstance(e, KeyboardInterrupt) else "failed"
        ws.catalog.finish_run(run_id, status, error=f"{type(e).__name__}: {e}")
        artifacts.publish_run_report(run_details(ws, run_id))
        raise
    ws.catalog.finish_run(run_id)
    artifacts.publish_run_report(run_details(ws, run_id))
    return {"run_id": run_id}
