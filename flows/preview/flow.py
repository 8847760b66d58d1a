"""The `preview` deployment: `stairs preview` from the Prefect UI. It asks the teacher about a
curriculum's first N corpus rows (with the form's overrides: another template, teacher or
sampling) and publishes the table and the measures as artifacts of the flow run."""

from __future__ import annotations

from prefect import flow

from flows import artifacts
from flows.orchestration import task_runner
from flows.params import PreviewParams
from flows.preview.trial import summary_line, trial
from flows.workspace import Workspace


def artifact_rows(result: dict) -> list[dict]:
    """The table the CLI prints, one dict per generated row (the UI renders long cells wrapped)."""
    return [{"row": r["row"], "sample": r["sample"], "question": r["question"],
             "teacher's answer": r["reply"], "gold": r["gold"], "parsed answer": r["answer"],
             "verdict": r["verdict"]} for r in result["rows"]]


@flow(name="preview", log_prints=True, task_runner=task_runner())
def preview_flow(params: PreviewParams) -> dict:
    """Preview a curriculum's template and teacher on its first N corpus rows; no run is
    recorded, every answer is cached for the run that follows."""
    spec = params.load()
    result = trial(spec, Workspace.open(), params.n)
    line = summary_line(result["measures"])
    print(f"preview of {result['template']} ({result['template_hash'][:12]}) with "
          f"{result['teacher']}: {line}")
    key = artifacts.artifact_key("preview", spec.name, result["template"])
    artifacts.table(key, artifact_rows(result), description=line)
    artifacts.table(key + "-measures", [{k: v for k, v in result["measures"].items()
                                         if k != "drops_by_reason"}],
                    description=f"{result['template']} ({result['template_hash'][:12]}) with "
                                f"{result['teacher']}")
    return result
