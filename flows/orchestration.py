"""Prefect glue shared by every stage flow.

`step` makes a function a Prefect task when it runs inside a flow run (so it shows in the UI with
its own state, retries and logs) and a plain call outside one: unit tests, notebooks and the
stage functions reused by other stages do not need a Prefect server for pure logic.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

from prefect import task
from prefect.context import FlowRunContext

F = TypeVar("F", bound=Callable)


def in_flow_run() -> bool:
    return FlowRunContext.get() is not None


def step(fn: F | None = None, **task_options) -> F:
    def wrap(f: F) -> F:
        as_task = task(f, **task_options)

        @functools.wraps(f)
        def call(*args, **kwargs):
            return as_task(*args, **kwargs) if in_flow_run() else f(*args, **kwargs)

        call.task = as_task
        return call  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap
