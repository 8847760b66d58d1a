"""A rich progress bar on stderr (stdout is for --json) for the slow loops that are not generate
or train (those have their own): ingest, evaluation and teacher scoring, curation, each quantized
artifact's measurement. Shown when stderr is a terminal, or when STAIRS_PROGRESS=1; never in
tests or logs unless asked."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterator


def wanted() -> bool:
    setting = os.environ.get("STAIRS_PROGRESS")
    if setting is not None:
        return setting not in ("0", "false", "no", "")
    return sys.stderr.isatty()


@contextmanager
def bar(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    """Yields advance(n=1, description=None). total None: a count without an end."""
    if not wanted():
        yield lambda n=1, description=None: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True))
    task = progress.add_task(description, total=total)
    progress.start()

    def advance(n: int = 1, description: str | None = None) -> None:
        if description is not None:
            progress.update(task, description=description)
        progress.advance(task, n)

    try:
        yield advance
    finally:
        progress.stop()
