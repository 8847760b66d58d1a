"""Deployments: what `stairs server`, `stairs deploy`, `stairs worker` and `stairs serve-flows`
do. deploy/prefect.yaml is the one list of deployments; everything here reads it.

From nothing to a run started in the UI (three terminals, from the project root):

    stairs server      # prefect server start on 127.0.0.1:4200, analytics off
    stairs deploy      # work pool 'stairs' (process) + every deployment in deploy/prefect.yaml
    stairs worker      # prefect worker start --pool stairs
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from flows.settings import PROJECT_ROOT, stairs_home

PREFECT_FILE = PROJECT_ROOT / "deploy" / "prefect.yaml"
DEFAULT_POOL = "stairs"
DEFAULT_API_URL = "http://127.0.0.1:4200/api"


def deployment_entries(prefect_file: Path = PREFECT_FILE) -> list[dict]:
    """The `deployments:` list of deploy/prefect.yaml (YAML anchors resolved)."""
    doc = yaml.safe_load(Path(prefect_file).read_text(encoding="utf-8"))
    entries = doc.get("deployments") or []
    for i, e in enumerate(entries):
        for key in ("name", "entrypoint"):
            if not e.get(key):
                raise ValueError(f"{prefect_file}: deployments[{i}] has no '{key}'")
    return entries


def pool_name(prefect_file: Path = PREFECT_FILE) -> str:
    names = {(e.get("work_pool") or {}).get("name") for e in deployment_entries(prefect_file)}
    names.discard(None)
    return names.pop() if len(names) == 1 else DEFAULT_POOL


def prefect_env(api_url: str | None = None) -> dict[str, str]:
    """Environment for talking to a long-running server: its API URL (the one given, the one
    already set, else the local `stairs server`), analytics off. Unlike `stairs run`, nothing
    here may fall back to a temporary server: a deployment on one would vanish with it."""
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    elif not env.get("PREFECT_API_URL"):
        from prefect.settings import get_current_settings

        env["PREFECT_API_URL"] = get_current_settings().api.url or DEFAULT_API_URL
    return env


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def server_command(host: str = "127.0.0.1", port: int = 4200) -> tuple[list[str], dict]:
    env = dict(os.environ)
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # One STAIRS_HOME holds everything, the server's database included, unless the user chose.
    env.setdefault("PREFECT_HOME", str(stairs_home() / "prefect"))
    env.pop("PREFECT_API_URL", None)
    return _prefect("server", "start", "--host", host, "--port", str(port)), env


def ensure_work_pool(name: str, api_url: str, pool_type: str = "process") -> bool:
    """Create the work pool unless one of that name exists. True when created. An existing pool
    is left as the operator configured it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    if pool_type != "process":
        raise ValueError(f"create {pool_type!r} pools with `prefect work-pool create`")
    with temporary_settings(updates={PREFECT_API_URL: api_url}), \
            get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(
                name=name, type=pool_type,
                base_job_template=ProcessWorker.get_default_base_job_template()))
        except ObjectAlreadyExists:  # created by someone else meanwhile
            return False
    return True


def deploy_command(pool: str | None = None, names: list[str] | None = None,
                   prefect_file: Path = PREFECT_FILE) -> list[str]:
    cmd = _prefect("--no-prompt", "deploy", "--prefect-file", str(prefect_file))
    if names:
        for n in names:
            cmd += ["--name", n]
    else:
        cmd.append("--all")
    if pool:
        cmd += ["--pool", pool]
    return cmd


def deploy(pool: str | None = None, names: list[str] | None = None, api_url: str | None = None,
           prefect_file: Path = PREFECT_FILE) -> int:
    """`prefect deploy --prefect-file deploy/prefect.yaml --all` from the project root, after
    making sure the work pool exists. Returns prefect's exit code."""
    env = prefect_env(api_url)
    ensure_work_pool(pool or pool_name(prefect_file), env["PREFECT_API_URL"])
    return subprocess.call(deploy_command(pool, names, prefect_file), env=env, cwd=PROJECT_ROOT)


def worker_command(pool: str | None = None, limit: int | None = None) -> list[str]:
    cmd = _prefect("worker", "start", "--pool", pool or pool_name(), "--type", "process")
    if limit:
        cmd += ["--limit", str(limit)]
    return cmd


def import_flow(entrypoint: str):
    """'flows/ingest/flow.py:ingest_flow' -> the flow, imported as the module flows.ingest.flow
    (Prefect's loader would load the file a second time under another module name).

    The runner ships the flow to its run process with cloudpickle, which copies a decorated
    function by value with only the globals its code uses: a `params` annotation kept as a
    string (PEP 563) would not resolve there. So the annotations are resolved here, once."""
    import importlib
    import typing

    path, _, attr = entrypoint.partition(":")
    module = path.removesuffix(".py").replace("/", ".")
    flow = getattr(importlib.import_module(module), attr)
    flow.fn.__annotations__ = typing.get_type_hints(flow.fn)
    return flow


def serve_flows(names: list[str] | None = None, prefect_file: Path = PREFECT_FILE) -> None:
    """Serve every deployment of deploy/prefect.yaml from this process: no work pool and no
    worker, the runs execute here. Blocks until interrupted."""
    import asyncio

    from prefect.runner import Runner

    os.chdir(PROJECT_ROOT)  # entrypoints and default curricula are relative to the project root
    runner = Runner(name="stairs-serve-flows", pause_on_shutdown=True)
    served = []
    for e in deployment_entries(prefect_file):
        if names and e["name"] not in names:
            continue
        # add_flow (unlike prefect.serve's add_deployment) keeps the flow object in this runner,
        # so runs start from it even when `prefect deploy` registered the same deployment
        # before with pull steps; serving takes the deployment over from the work pool.
        runner.add_flow(import_flow(e["entrypoint"]), name=e["name"],
                        description=e.get("description"), tags=e.get("tags"),
                        parameters=e.get("parameters") or {})
        served.append(e["name"])
    if not served:
        raise ValueError(f"no deployment named {names} in {prefect_file}")
    print(f"serving {', '.join(served)} (Ctrl-C stops)", flush=True)
    asyncio.run(runner.start())
