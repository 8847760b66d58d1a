"""Progress of a generate run: a rich bar on a terminal, and the Prefect progress artifact
(flows/artifacts.py) when running inside a flow run. The hot loop only counts; both throttle."""

from __future__ import annotations

import sys

from flows import artifacts


class Progress:
    def __init__(self, total: int, template: str, teacher: str, *, bar: bool | None = None):
        self._bar = self._task = None
        if bar if bar is not None else sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), transient=False,
                            console=Console(stderr=True))  # stdout is for --json
            self._bar.start()
            self._task = self._bar.add_task(f"generate {template} with {teacher}", total=total)
        # Key "generate-<template>-progress": one artifact per stage and template in the UI.
        self._artifact = artifacts.progress("generate", template, total=total)

    def advance(self, n: int = 1) -> None:
        self._artifact.advance(n)
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def close(self) -> None:
        self._artifact.finish()
        if self._bar is not None:
            self._bar.stop()
