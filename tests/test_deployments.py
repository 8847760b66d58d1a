"""deploy/prefect.yaml is the one list of deployments: every flow in flows/ has an entry, every
entry points at a flow taking one typed params model, and its default parameters are valid."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys

import pytest
import yaml
from prefect import Flow

import flows
from flows.deployments import (
    PREFECT_FILE,
    deploy_command,
    deployment_entries,
    pool_name,
    server_command,
    worker_command,
)
from flows.params import FlowParams
from flows.settings import PROJECT_ROOT


def flows_in_package() -> dict[str, Flow]:
    """Every @flow defined in a flows/ module (stage packages included), by
    'flows/<path>.py:<function>'."""
    found = {}
    for info in pkgutil.walk_packages(flows.__path__, "flows."):
        if info.ispkg or info.name.endswith(("vllm_offline", "gptq")):
            continue
        module = importlib.import_module(info.name)
        for attr, value in vars(module).items():
            if isinstance(value, Flow) and value.fn.__module__ == module.__name__:
                found[f"{info.name.replace('.', '/')}.py:{attr}"] = value
    return found


def params_model(flow: Flow) -> type[FlowParams]:
    sig = inspect.signature(flow.fn)
    assert list(sig.parameters) == ["params"], (
        f"{flow.name}: a stage flow takes exactly one argument, `params: <FlowParams model>`")
    hints = inspect.get_annotations(flow.fn, eval_str=True)
    model = hints["params"]
    assert issubclass(model, FlowParams)
    return model


def test_every_flow_has_a_deployment_and_every_deployment_a_flow():
    entries = {e["entrypoint"] for e in deployment_entries()}
    assert entries == set(flows_in_package()), (
        "add one entry per flow to deploy/prefect.yaml (see the comment at its top)")


@pytest.mark.parametrize("entry", deployment_entries(), ids=lambda e: e["name"])
def test_entries_point_at_typed_flows_with_valid_defaults(entry):
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(PROJECT_ROOT / entry["entrypoint"].split(":")[0])
                                     + ":" + entry["entrypoint"].split(":")[1])
    model = params_model(flow)
    defaults = entry["parameters"]["params"]
    # Relative curricula resolve from the project root, where the worker runs.
    assert model(**defaults).load().name
    assert entry["work_pool"]["name"] == pool_name() == "stairs"
    assert entry.get("description")


def test_example_schedule_is_inactive():
    doc = yaml.safe_load(PREFECT_FILE.read_text())
    schedules = [s for e in doc["deployments"] for s in e.get("schedules") or []]
    assert schedules and all(s["active"] is False for s in schedules)
    assert doc["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == (
        "{{ project-root.stdout }}")


def test_commands():
    assert deploy_command()[1:] == ["-m", "prefect", "--no-prompt", "deploy", "--prefect-file",
                                    str(PREFECT_FILE), "--all"]
    assert deploy_command("gpu", ["staircase"])[-4:] == ["--name", "staircase", "--pool", "gpu"]
    assert worker_command(limit=2)[1:] == ["-m", "prefect", "worker", "start", "--pool", "stairs",
                                           "--type", "process", "--limit", "2"]
    cmd, env = server_command(port=4300)
    assert cmd[0] == sys.executable and cmd[-2:] == ["--port", "4300"]
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "PREFECT_API_URL" not in env
