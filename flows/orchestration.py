"""Prefect glue shared by every stage flow.

`step` makes a function a Prefect task when it runs inside a flow run (so it shows in the UI with
its own state, retries and logs) and a plain call outside one: unit tests, notebooks and the
stage functions reused by other stages do not need a Prefect server for pure logic.

Also here: `map_step` (one named task per batch, spread by the flow's task runner),
`task_runner()` (thread pool, Dask or Ray, chosen by environment) and `teacher_slot` (a global
concurrency limit per teacher endpoint). docs/deploy.md shows how they fit together.
"""

from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext

F = TypeVar("F", bound=Callable)


def in_flow_run() -> bool:
    return FlowRunContext.get() is not None


def in_run() -> bool:
    """In a flow run, or in one of its task runs on a worker of the task runner (a Dask or
    Ray worker process has the task run's context, not the flow run's)."""
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def step(fn: F | None = None, **task_options) -> F:
    # No Prefect result caching by default: stages reuse finished work by their own fingerprints
    # (catalog + shards), and hashing their inputs (workspaces, live models) is wrong and slow.
    task_options.setdefault("cache_policy", NO_CACHE)

    def wrap(f: F) -> F:
        as_task = task(f, **task_options)

        @functools.wraps(f)
        def call(*args, **kwargs):
            return as_task(*args, **kwargs) if in_flow_run() else f(*args, **kwargs)

        call.task = as_task
        return call  # type: ignore[return-value]

    return wrap(fn) if fn is not None else wrap


def map_step(fn: Callable, items, *, name: str | None = None, parallel: bool = True,
             each: Callable | None = None, **kwargs) -> list:
    """Run a `step` once per item (a generation batch, a curation partition) and return the
    results in item order. Inside a flow run each call is its own task, submitted to the flow's
    task runner, so a Dask or Ray runner spreads them over a cluster and the UI shows one named
    task run per batch ("generate-batch-0", ...). Outside a flow run: a plain loop.

    parallel=False: one task after another in the flow's own thread (work bound to objects
    that live in this process, such as a model loaded in memory). `each(index, result)` is
    called in the flow's process as each item finishes (progress)."""
    as_task = getattr(fn, "task", None)
    if as_task is None:
        raise TypeError(f"{getattr(fn, '__name__', fn)!r} is not a @step; map_step needs one")
    items = list(items)
    if not in_flow_run():
        results = []
        for i, item in enumerate(items):
            results.append(fn(item, **kwargs))
            if each is not None:
                each(i, results[-1])
        return results
    label = name or as_task.name
    named = [as_task.with_options(task_run_name=f"{label}-{i}") for i in range(len(items))]
    if not parallel:
        results = []
        for i, (t, item) in enumerate(zip(named, items)):
            results.append(t(item, **kwargs))
            if each is not None:
                each(i, results[-1])
        return results
    futures = [t.submit(item, **kwargs) for t, item in zip(named, items)]
    if each is None:
        return [f.result() for f in futures]
    from prefect.futures import as_completed

    order = {f.task_run_id: i for i, f in enumerate(futures)}
    results: list = [None] * len(futures)
    for f in as_completed(futures):
        i = order[f.task_run_id]
        results[i] = f.result()
        each(i, results[i])
    return results


def worker_name() -> str | None:
    """The Dask worker's name or the Ray worker's id running this task, else None (a thread of
    the flow's process, or a plain call): stages record it per batch and partition. Only
    looked up where the cluster's library is already loaded (a worker has it; importing Ray
    here would cost seconds, and two batch threads importing it at once see half a module)."""
    import sys

    distributed, ray = sys.modules.get("distributed"), sys.modules.get("ray")
    if distributed is not None:
        try:
            return str(distributed.get_worker().name)
        except ValueError:  # not in a Dask worker
            pass
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        context = ray.get_runtime_context()
        if context.worker.mode == ray.WORKER_MODE:  # not the driver (the flow's process)
            return f"ray:{context.get_worker_id()[:12]}"
    return None


# -- task runners ------------------------------------------------------------------------------
TASK_RUNNERS = ("thread", "dask", "ray")


def task_runner():
    """The task runner stage flows use, chosen by environment so one deployment runs on a laptop
    or a cluster unchanged:

    STAIRS_TASK_RUNNER          thread (default) | dask | ray
    STAIRS_TASK_RUNNER_ADDRESS  dask: scheduler address (tcp://host:8786); ray: cluster address
                                (ray://host:10001). Empty: a local cluster started per flow run.
    STAIRS_MAX_WORKERS          thread pool size, or workers of the local Dask cluster.
    """
    import os

    kind = os.environ.get("STAIRS_TASK_RUNNER", "thread").strip().lower() or "thread"
    address = os.environ.get("STAIRS_TASK_RUNNER_ADDRESS") or None
    workers_env = os.environ.get("STAIRS_MAX_WORKERS")
    try:
        workers = int(workers_env) if workers_env else None
    except ValueError:
        raise ValueError(f"STAIRS_MAX_WORKERS must be an integer, got {workers_env!r}") from None
    if kind == "thread":
        from prefect.task_runners import ThreadPoolTaskRunner

        return ThreadPoolTaskRunner(max_workers=workers)
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise RuntimeError("STAIRS_TASK_RUNNER=dask needs the dask extra: "
                               "pip install 'stairs[dask]'") from None
        if address:
            return DaskTaskRunner(address=address)
        # A local cluster bound to loopback, one thread per worker process (tasks hold the GIL).
        return DaskTaskRunner(cluster_kwargs={
            "n_workers": workers or 2, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": None})
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError:
            raise RuntimeError("STAIRS_TASK_RUNNER=ray needs the ray extra: "
                               "pip install 'stairs[ray]'") from None
        return RayTaskRunner(address=address) if address else RayTaskRunner()
    raise ValueError(f"STAIRS_TASK_RUNNER must be one of {', '.join(TASK_RUNNERS)}; got {kind!r}")


# -- teacher endpoints ---------------------------------------------------------------------------
DEFAULT_TEACHER_SLOTS = 4
_known_limits: set[tuple[str, str]] = set()  # (API URL, limit name) seen to exist


def teacher_limit_name(endpoint: str) -> str:
    """One global concurrency limit per teacher endpoint, named after its host, port and path:
    'http://10.0.0.5:8000/v1' -> 'teacher-10.0.0.5-8000-v1'. Prefect bans '/' in names."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    where = (parts.netloc or "") + (parts.path or "")
    if not where:
        where = endpoint
    return "teacher-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", where).strip("-") or "default")


def ensure_limit(name: str, slots: int) -> None:
    """Create the global concurrency limit if it does not exist yet. An existing limit keeps the
    size an operator set in the UI (`prefect gcl update NAME --limit N`): we never resize it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.settings import get_current_settings

    seen = (str(get_current_settings().api.url), name)
    if seen in _known_limits:
        return
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=slots))
            except ObjectAlreadyExists:  # another run created it between our read and create
                pass
    _known_limits.add(seen)


@dataclass
class Held:
    name: str  # the limit's name (replicas: their limits' names, comma-separated)
    occupied: int  # slots held (of each limit)


def limit_size(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).limit


@contextmanager
def endpoint_slots(endpoint: str | list[str], *, slots: int | None = None, occupy: int = 1,
                   timeout_seconds: float | None = None) -> Iterator[Held | None]:
    """Hold `occupy` slots (at most the limit's size, read now: an operator may have changed
    it in the UI) of the endpoint's global concurrency limit; yield what is held, or None
    outside a flow run. A generate batch holds as many slots as it keeps requests in flight,
    so a limit of N slots means at most N requests at the endpoint from every run on every
    worker together.

    `slots` sizes the limit when it is first created (default: STAIRS_TEACHER_SLOTS, else 4)."""
    import os

    if not in_run():
        yield None
        return
    from prefect.concurrency.sync import concurrency

    endpoints = endpoint if isinstance(endpoint, list) else [endpoint]
    names = [teacher_limit_name(e) for e in endpoints]  # replicas: one limit each
    size = slots if slots is not None else int(os.environ.get("STAIRS_TEACHER_SLOTS",
                                                              DEFAULT_TEACHER_SLOTS))
    for name in names:
        ensure_limit(name, size)
    occupied = max(1, min([occupy] + [limit_size(n) for n in names])) if occupy > 1 else 1
    with concurrency(names, occupy=occupied, timeout_seconds=timeout_seconds, strict=True):
        yield Held(",".join(names), occupied)


@contextmanager
def teacher_slot(endpoint: str, *, slots: int | None = None,
                 timeout_seconds: float | None = None) -> Iterator[str | None]:
    """Hold one slot of the endpoint's global concurrency limit around one teacher request (or
    one batch), so every flow run on every worker shares the endpoint's capacity: two scheduled
    runs never overload one vLLM server together.

    `slots` sizes the limit when it is first created (default: STAIRS_TEACHER_SLOTS, else 4).
    Outside a flow run it is a no-op, so unit tests and plain calls need no Prefect server.
    Yields the limit's name (None when no limit applied)."""
    with endpoint_slots(endpoint, slots=slots, timeout_seconds=timeout_seconds) as held:
        yield held.name if held is not None else None
