"""Prefect artifacts every stage can publish: progress bars while work runs, tables and markdown
reports when it ends. They show on the flow run's Artifacts tab and, with a key, on the UI's
Artifacts page where successive runs of the same key form a history.

Outside a flow run (unit tests, notebooks) every helper is a no-op returning None, so stage code
calls them unconditionally and pure logic never needs a Prefect server.

    bar = progress("generate", "round 0", total=len(batches))
    for batch in batches:
        ...
        bar.advance()
    table("curate-drops", [{"reason": r, "rows": n} for r, n in drops.items()])
    markdown("staircase-report", run_report_markdown(details))
"""

from __future__ import annotations

import re
import time
from typing import Any
from uuid import UUID

from flows.orchestration import in_flow_run


def artifact_key(*parts: Any) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    raw = "-".join(str(p) for p in parts if p not in (None, ""))
    key = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
    return re.sub(r"-{2,}", "-", key) or "stairs"


def table(key: str, rows: list[dict] | list[list], description: str | None = None) -> UUID | None:
    if not in_flow_run():
        return None
    from prefect.artifacts import create_table_artifact

    # Prefect renders cells as text; None would show as "null".
    clean = [{k: ("" if v is None else v) for k, v in r.items()} if isinstance(r, dict) else r
             for r in rows]
    return create_table_artifact(clean, key=artifact_key(key), description=description)


def markdown(key: str, text: str, description: str | None = None) -> UUID | None:
    if not in_flow_run():
        return None
    from prefect.artifacts import create_markdown_artifact

    return create_markdown_artifact(text, key=artifact_key(key), description=description)


class Progress:
    """A progress artifact updated as work advances, throttled so a loop over thousands of rows
    sends a handful of requests, not thousands. `done` never exceeds `total`."""

    def __init__(self, key: str, description: str | None = None, *, total: int,
                 min_interval_s: float = 2.0):
        self.total = max(int(total), 0)
        self.done = 0
        self.min_interval_s = min_interval_s
        self._last_sent = float("-inf")
        self._sent_percent: float | None = None
        self.artifact_id: UUID | None = None
        if in_flow_run():
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(
                0.0, key=artifact_key(key), description=description)
            self._last_sent = time.monotonic()
            self._sent_percent = 0.0

    @property
    def percent(self) -> float:
        return 100.0 if self.total == 0 else round(100.0 * self.done / self.total, 2)

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        now = time.monotonic()
        if self.done >= self.total or now - self._last_sent >= self.min_interval_s:
            self._send(now)

    def finish(self) -> None:
        self.done = self.total
        self._send(time.monotonic())

    def _send(self, now: float) -> None:
        if self.artifact_id is None or self._sent_percent == self.percent:
            return
        from prefect.artifacts import update_progress_artifact

        update_progress_artifact(self.artifact_id, self.percent)
        self._last_sent, self._sent_percent = now, self.percent


def progress(stage: str, what: str | None = None, *, total: int,
             min_interval_s: float = 2.0) -> Progress:
    return Progress(artifact_key(stage, what, "progress"), what or stage, total=total,
                    min_interval_s=min_interval_s)


def counts_table(counts: dict[str, int], *, label: str = "reason") -> list[dict]:
    """{reason: n} -> rows for `table`, largest first (drops, rejects, errors by reason)."""
    return [{label: k, "rows": v} for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]


STAGE_COLUMNS = ("stage", "round", "status", "seconds", "shards", "rows")


def stage_cells(st: dict) -> list[str]:
    """One stage of `run_details` as the text of STAGE_COLUMNS: the row `stairs show` prints
    and the markdown report writes."""
    return [st["name"] + (" (reused)" if st["reused_from"] else ""),
            "" if st["round"] is None else str(st["round"]), st["status"],
            "" if st.get("seconds") is None else f"{st['seconds']:.1f}",
            ", ".join(sorted({s["kind"] for s in st["shards"]})),
            str(sum(s["rows"] for s in st["shards"]))]


def run_report_markdown(details: dict) -> str:
    """A run's report from `flows.runinfo.run_details`: what `stairs show` prints, as markdown."""
    run = details["run"]
    lines = [f"# Run `{run['id']}`", "",
             f"- curriculum: **{run['curriculum']}** ({run['command']})",
             f"- status: **{run['status']}**"]
    if run.get("error"):
        lines.append(f"- error: `{run['error']}`")
    lines += ["", "| " + " | ".join(STAGE_COLUMNS) + " |", "|---" * len(STAGE_COLUMNS) + "|"]
    lines += ["| " + " | ".join(stage_cells(st)) + " |" for st in details["stages"]]
    if details.get("rejects_by_reason"):
        lines += ["", "Rejected or dropped rows by reason:", ""]
        lines += [f"- {k}: {v}" for k, v in details["rejects_by_reason"].items()]
    if details.get("metrics"):
        lines += ["", "| metric | value | round | split |", "|---|---|---|---|"]
        lines += [f"| {m['name']} | {m['value']:.4g} | {'' if m['round'] is None else m['round']}"
                  f" | {m['split'] or ''} |" for m in details["metrics"]]
    return "\n".join(lines) + "\n"


def stage_rows(details: dict) -> list[dict]:
    """One table row per stage of a run."""
    return [{"stage": st["name"], "round": st["round"], "status": st["status"],
             "seconds": st.get("seconds"), "shards": len(st["shards"]),
             "rows": sum(s["rows"] for s in st["shards"]), "reused": bool(st["reused_from"])}
            for st in details["stages"]]


def publish_run_report(details: dict, *, prefix: str = "stairs") -> list[UUID | None]:
    """The markdown report and the stage table of a run, keyed per curriculum so the UI keeps
    a history of reports for each curriculum."""
    curriculum = details["run"]["curriculum"]
    return [markdown(artifact_key(prefix, curriculum, "report"), run_report_markdown(details),
                     description=f"Run {details['run']['id']}"),
            table(artifact_key(prefix, curriculum, "stages"), stage_rows(details),
                  description=f"Stages of run {details['run']['id']}")]
