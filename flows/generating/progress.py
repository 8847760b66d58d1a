"""Progress of a generate run: a rich bar on a terminal, and a Prefect progress artifact when
running inside a flow run (visible in the UI). Both are throttled: the hot loop only counts."""

from __future__ import annotations

import sys
import time

from flows.orchestration import in_flow_run

ARTIFACT_EVERY_S = 2.0


class Progress:
    def __init__(self, total: int, label: str, *, bar: bool | None = None):
        self.total, self.done = total, 0
        self._bar = self._task = None
        self._artifact = None
        self._last_artifact = 0.0
        if bar if bar is not None else sys.stderr.isatty():
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bar,
                                       TextColumn, TimeRemainingColumn)

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total)
        if in_flow_run():
            from prefect.artifacts import create_progress_artifact

            self._artifact = create_progress_artifact(
                progress=0.0, key="generate-progress",
                description=f"{label}: requests answered (cache hits included)")

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        if self._artifact is not None and time.monotonic() - self._last_artifact > ARTIFACT_EVERY_S:
            self._push()

    def _push(self) -> None:
        from prefect.artifacts import update_progress_artifact

        self._last_artifact = time.monotonic()
        percent = 100.0 * self.done / self.total if self.total else 100.0
        update_progress_artifact(artifact_id=self._artifact, progress=percent)

    def close(self) -> None:
        if self._artifact is not None:
            self._push()
        if self._bar is not None:
            self._bar.stop()
