"""A rich progress bar on stderr (stdout is for --json) for the slow loops other than generate's
request loop (which has its own): ingest, training steps, evaluation and teacher scoring,
curation, each quantized artifact's measurement. Shown when stderr is a terminal, or when
STAIRS_PROGRESS=1; never in tests or logs unless asked."""

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
def bar(description: str, total: int | None, *, start: int = 0, columns: tuple[str, ...] = (),
        **fields) -> Iterator[Callable[..., None]]:
    """Yields advance(n=1, description=None, **fields). total None: a count without an end;
    start: steps already done (a resumed loop); columns: extra text columns after the count, rich
    formats over the task's fields (e.g. "loss {task.fields[loss]:.4f}"), whose first values are
    the keyword arguments and which advance's keywords update."""
    if not wanted():
        yield lambda n=1, description=None, **fields: None
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
                        *map(TextColumn, columns), TimeElapsedColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True))
    task = progress.add_task(description, total=total, completed=start, **fields)
    progress.start()

    def advance(n: int = 1, description: str | None = None, **fields) -> None:
        if description is not None:
            fields["description"] = description
        progress.update(task, advance=n, **fields)

    try:
        yield advance
    finally:
        progress.stop()
