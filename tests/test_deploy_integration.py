"""End to end through a real Prefect server on loopback, the way a user works from the UI:

`prefect server start` (PREFECT_HOME in tmp, analytics off) -> `stairs deploy` (deploy/prefect.yaml,
work pool created) -> `stairs worker` -> a staircase run created through the REST API exactly as
the UI's Run button does -> wait -> its artifacts. Then bad parameters, the run form in headless
Chromium, and a local Dask cluster as the task runner. One server for the whole module; every
process we start is stopped by its PID (process group) even when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent

# Tiny on purpose: the whole staircase of this curriculum must finish in seconds on 2 cores.
TINY = """\
name: tiny
description: a few demo rows for the deployment test
corpus:
  format: demo
  demo: {rows: 24, seed: 3}
  eval_fraction: 0.25
# The staircase now asks the embedded llama.cpp teacher: a few short answers keep it to seconds.
teacher: {max_tokens: 24}
generate: {max_rows: 2}
# Tiny training and measuring, for the rounds whose curation keeps rows.
student: {max_steps: 2, batch_size: 2, eval_rows: 2, eval_max_new_tokens: 16, evaluate_base: false}
quantization: {gguf_types: [Q8_0], int8_absmax: null, int4_group_size: null, eval_rows: 4,
               max_new_tokens: 24, speed_tokens: 4}
staircase:
  rounds: 1
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process we started and everything it spawned (its own process group)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        pass


def wait_until(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except httpx.HTTPError as e:
            last = e
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s (last error: {last})")


class Stack:
    """The server, the worker and their logs, for one test module."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = self.url + "/api"
        self.procs: list[subprocess.Popen] = []
        self.home = tmp / "stairs-home"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update({
            "PREFECT_HOME": str(tmp / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": self.api,
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "STAIRS_HOME": str(self.home),
            "PYTHONPATH": str(ROOT),
        })
        self.env.pop("STAIRS_CATALOG_URL", None)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "wb") as log:  # the child keeps its own handle
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prefect-stack")
    s = Stack(tmp)
    try:
        s.start("server", [sys.executable, "-m", "prefect", "server", "start",
                           "--host", "127.0.0.1", "--port", str(s.port)])

        def healthy():
            if s.procs[0].poll() is not None:
                raise RuntimeError("prefect server exited:\n" + s.log("server"))
            return httpx.get(s.api + "/health", timeout=2).status_code == 200

        # 4-13 s on an idle machine; over 50 s measured with 6 helpers sharing 2 cores.
        wait_until(healthy, 180, "prefect server")
        deploy = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "--api-url", s.api],
                                cwd=ROOT, env=s.env, capture_output=True, text=True, timeout=180)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        s.worker = s.start("worker", [sys.executable, "-m", "flows.cli", "worker",
                                      "--api-url", s.api])
        yield s
    finally:
        s.stop_all()


def api(stack: Stack, method: str, path: str, **kw) -> httpx.Response:
    # Like Prefect's own client (and a user clicking again): retry the 503 the server answers
    # while its SQLite database is busy with another writer.
    for attempt in range(6):
        r = httpx.request(method, stack.api + path, timeout=30, **kw)
        if r.status_code != 503:
            return r
        time.sleep(0.5 * 2 ** attempt)
    return r


def deployment_id(stack: Stack, flow: str, name: str) -> str:
    r = api(stack, "GET", f"/deployments/name/{flow}/{name}")
    assert r.status_code == 200, r.text
    return r.json()["id"]


def quick_run(stack: Stack, dep_id: str, parameters: dict) -> httpx.Response:
    """What the UI's Run button sends: POST create_flow_run with the form's parameters and a
    Scheduled state for now."""
    return api(stack, "POST", f"/deployments/{dep_id}/create_flow_run", json={
        "parameters": parameters,
        "state": {"type": "SCHEDULED", "name": "Scheduled", "message": "Run from the UI"},
    })


def wait_for_run(stack: Stack, run_id: str, timeout: float = 150) -> dict:
    def finished():
        run = api(stack, "GET", f"/flow_runs/{run_id}").json()
        if run["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        return None

    try:
        return wait_until(finished, timeout, f"flow run {run_id}", interval=1)
    except TimeoutError:
        raise AssertionError("run did not finish; worker log:\n" + stack.log("worker")
                             + "\nserve log:\n" + stack.log("serve")) from None


@pytest.fixture(scope="module")
def tiny_curriculum(stack) -> Path:
    path = stack.tmp / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_deployments_registered_from_prefect_yaml(stack):
    from flows.deployments import deployment_entries

    r = api(stack, "POST", "/deployments/filter", json={})
    names = {d["name"] for d in r.json()}
    assert names == {e["name"] for e in deployment_entries()}
    dep = api(stack, "GET", f"/deployments/{deployment_id(stack, 'staircase', 'staircase')}").json()
    assert dep["work_pool_name"] == "stairs"
    assert dep["pull_steps"][0]["prefect.deployments.steps.set_working_directory"][
        "directory"] == str(ROOT)
    # The example schedule ships switched off.
    assert [s["active"] for s in dep["schedules"]] == [False]
    assert dep["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
    schema = dep["parameter_openapi_schema"]
    fields = schema["definitions"]["StaircaseParams"]["properties"]
    assert set(fields) == {"curriculum", "new", "rounds", "overrides"}
    overrides = schema["definitions"]["Overrides"]["properties"]
    assert overrides["temperature"]["anyOf"][0]["maximum"] == 2
    assert "Curriculum YAML" in fields["curriculum"]["description"]
    pool = api(stack, "GET", "/work_pools/stairs").json()
    assert pool["type"] == "process"


def test_staircase_run_from_the_ui_completes_with_artifacts(stack, tiny_curriculum):
    dep_id = deployment_id(stack, "staircase", "staircase")
    r = quick_run(stack, dep_id, {"params": {"curriculum": str(tiny_curriculum), "new": True}})
    assert r.status_code == 201, r.text
    run = wait_for_run(stack, r.json()["id"])
    assert run["state_type"] == "COMPLETED", (run["state"], stack.log("worker"))

    arts = api(stack, "POST", "/artifacts/filter",
               json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
    by_key = {a["key"]: a for a in arts}
    assert {"stairs-tiny-report", "stairs-tiny-stages", "ingest-tiny-summary"} <= set(by_key)
    assert by_key["stairs-tiny-report"]["type"] == "markdown"
    report = by_key["stairs-tiny-report"]["data"]
    stages = json.loads(by_key["stairs-tiny-stages"]["data"])
    assert stages[0]["stage"] == "ingest" and stages[0]["status"] == "completed"
    summary = json.loads(by_key["ingest-tiny-summary"]["data"])[0]
    assert summary["train_rows"] + summary["eval_rows"] == 24

    # The worker's flow run wrote the catalog in STAIRS_HOME: the same run, completed.
    from storage.catalog import Catalog

    catalog = Catalog(url=f"sqlite:///{stack.home / 'catalog.db'}")
    stairs_run = catalog.runs(1)[0]
    assert stairs_run.status == "completed" and stairs_run.curriculum == "tiny"
    assert f"Run `{stairs_run.id}`" in report
    # The flow's named task shows as its own task run.
    tasks = api(stack, "POST", "/task_runs/filter",
                json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
    assert "read-and-validate" in {t["name"].rsplit("-", 1)[0] for t in tasks}


def test_bad_parameters_are_rejected_with_the_validation_message(stack, tiny_curriculum):
    dep_id = deployment_id(stack, "staircase", "staircase")
    # Schema violations never reach a worker: the server refuses the run.
    r = quick_run(stack, dep_id, {"params": {"curriculum": str(tiny_curriculum), "rounds": 0}})
    assert r.status_code == 409
    assert "0 is less than the minimum of 1" in r.json()["detail"]
    r = quick_run(stack, dep_id, {"params": {"curriculum": "notes.txt"}})
    assert r.status_code == 409 and "does not match" in r.json()["detail"]

    # A curriculum the spec rejects fails the run at once, with the spec's own message.
    bad = stack.tmp / "bad.yaml"
    bad.write_text(TINY.replace("rounds: 1", "rounds: 1\n  steps: 3"))
    r = quick_run(stack, dep_id, {"params": {"curriculum": str(bad)}})
    assert r.status_code == 201, r.text
    run = wait_for_run(stack, r.json()["id"])
    assert run["state_type"] == "FAILED"
    message = run["state"]["message"]
    assert "staircase.steps: unknown key" in message and str(bad) in message


def _catalog(stack: Stack):
    """The catalog the worker's flow runs write (STAIRS_HOME of the stack)."""
    from storage.catalog import Catalog

    stack.home.mkdir(exist_ok=True)
    return Catalog(url=f"sqlite:///{stack.home / 'catalog.db'}")


def test_staircase_run_with_an_override_from_the_ui(stack, tiny_curriculum):
    """The form's overrides reach the run: another template and teacher, recorded in the run's
    stored spec and visible on every generated row."""
    from flows.prompting import load_template
    from flows.spec import Curriculum
    from flows.workspace import Workspace
    from storage.shards import ShardStore
    from tests.helpers.openai_server import FakeOpenAI

    dep_id = deployment_id(stack, "staircase", "staircase")
    before = {r.id for r in _catalog(stack).runs(50)}
    with FakeOpenAI() as srv:
        overrides = {"template": "textbook", "teacher_backend": "openai", "teacher_model": "fake",
                     "teacher_base_url": srv.base_url, "max_rows": 3}
        r = quick_run(stack, dep_id, {"params": {"curriculum": str(tiny_curriculum),
                                                 "overrides": overrides}})
        assert r.status_code == 201, r.text
        # The heaviest run here: its lessons are kept, so it trains, quantizes and scores the
        # 135M student (over 150 s on the 2-core machine at load average 4-7).
        run = wait_for_run(stack, r.json()["id"], timeout=480)
        asked = sum(srv.received.values())
    assert run["state_type"] == "COMPLETED", (run["state"], stack.log("worker"))
    catalog = _catalog(stack)
    [new] = [x for x in catalog.runs(50) if x.id not in before]
    spec = Curriculum.model_validate_json(new.spec_json)
    assert spec.generate.template == "textbook" and spec.generate.max_rows == 3
    assert (spec.teacher.backend, spec.teacher.base_url) == ("openai", srv.base_url)

    ws = Workspace(catalog=catalog, store=ShardStore(catalog, root=stack.home / "shards"))
    rows = ws.store.table(ws.stage_shards(new.id, "generate", "generated", round_index=0))
    textbook = load_template("textbook")
    # The remote teacher was asked for the 3 rows, and scored on the held-out rows first.
    scoring = sum(m.value for m in catalog.metrics(run_id=new.id)
                  if m.name == "teacher_score_requests")
    assert rows.num_rows == 3 and scoring > 0 and asked == rows.num_rows + scoring
    assert set(rows.column("template").to_pylist()) == {"textbook"}
    assert set(rows.column("template_hash").to_pylist()) == {textbook.content_hash}
    # Lessons are kept and train the student with an LM loss; a student taught only lessons
    # does not beat the scored teacher, and the round says so.
    [rnd] = catalog.rounds(new.id)
    assert rnd.student_model_id is not None
    assert rnd.gate_passed is False and "<= teacher" in rnd.gate_reason


def test_bad_override_is_rejected_with_the_validation_message(stack, tiny_curriculum):
    dep_id = deployment_id(stack, "staircase", "staircase")
    r = quick_run(stack, dep_id, {"params": {"curriculum": str(tiny_curriculum),
                                             "overrides": {"temperature": 5}}})
    assert r.status_code == 409 and "5 is greater than the maximum of 2" in r.json()["detail"]
    # Past the schema, the spec's own rules and pre-flight checks fail the run with their message.
    r = quick_run(stack, dep_id, {"params": {"curriculum": str(tiny_curriculum),
                                             "overrides": {"template": "nope"}}})
    assert r.status_code == 201, r.text
    run = wait_for_run(stack, r.json()["id"])
    assert run["state_type"] == "FAILED"
    assert "generate.template:" in run["state"]["message"]
    assert "no template 'nope'" in run["state"]["message"]


def test_preview_deployment_publishes_the_table(stack, tiny_curriculum):
    from tests.helpers.openai_server import FakeOpenAI

    dep_id = deployment_id(stack, "preview", "preview")
    with FakeOpenAI() as srv:
        r = quick_run(stack, dep_id, {"params": {
            "curriculum": str(tiny_curriculum), "n": 2,
            "overrides": {"teacher_backend": "openai", "teacher_model": "fake",
                          "teacher_base_url": srv.base_url}}})
        assert r.status_code == 201, r.text
        run = wait_for_run(stack, r.json()["id"])
    assert run["state_type"] == "COMPLETED", (run["state"], stack.log("worker"))
    arts = api(stack, "POST", "/artifacts/filter",
               json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}).json()
    by_key = {a["key"]: a for a in arts}
    table = by_key["preview-tiny-rationale"]
    rows = json.loads(table["data"])
    assert [(r["row"], r["verdict"]) for r in rows] == [(1, "kept"), (2, "kept")]
    assert all(r["teacher's answer"].endswith(f"Answer: {r['gold']}") for r in rows)
    assert table["description"].startswith("2 rows from 2 corpus rows: parsed 2 (100%), kept 2")
    measures = json.loads(by_key["preview-tiny-rationale-measures"]["data"])[0]
    assert measures["accuracy"] == 1.0 and measures["sent"] == 2


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_run_form_in_headless_chromium_shows_the_parameter_form(stack, tmp_path):
    dep_id = deployment_id(stack, "staircase", "staircase")
    page = f"{stack.url}/deployments/deployment/{dep_id}/run"
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
            # Tall enough for the whole form, the overrides included.
            "--window-size=1280,2600", "--virtual-time-budget=20000"]
    env = {**os.environ, "HOME": str(tmp_path)}
    dom = subprocess.run(base + ["--dump-dom", page], capture_output=True, text=True,
                         timeout=120, env=env).stdout
    shot = tmp_path / "run-form.png"
    subprocess.run(base + [f"--screenshot={shot}", page], capture_output=True, timeout=120,
                   env=env)
    # The form the UI built from StaircaseParams: its fields and their descriptions.
    for text in ("Curriculum", "Rounds", "Override staircase.rounds from the curriculum",
                 "Start a fresh run instead of resuming",
                 # The overrides, each with its curriculum key and the spec's own help.
                 "Overrides", "Teacher Model", "Template", "Temperature", "Student Objective",
                 "Override generate.template: Prompt template name in prompts/.",
                 "Override teacher.temperature: Sampling temperature."):
        assert text in dom, f"{text!r} not on the run form; DOM starts: {dom[:2000]}"
    assert shot.exists() and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


# -- in-process flows against the module's server ------------------------------------------------
import cloudpickle  # noqa: E402
from prefect import flow  # noqa: E402

from flows.orchestration import map_step, step, task_runner, teacher_slot  # noqa: E402

# Dask workers are other processes: ship this module's steps by value, not by import path.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture
def in_process(stack, monkeypatch):
    """Flows run in this process talk to the module's server (and so do Dask workers we spawn,
    through the environment), never to a temporary one."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", stack.api)
    with temporary_settings(updates={PREFECT_API_URL: stack.api}):
        yield stack
        # Send queued logs and events while the server is still up; otherwise they retry
        # against a stopped server when the interpreter exits.
        APILogHandler().flush()
        EventsWorker.drain_all(timeout=10)


@step(name="whoami")
def whoami(index: int) -> int:
    return os.getpid()


@flow(name="fan-out")
def fan_out(n: int) -> list[int]:
    return map_step(whoami, range(n), name="batch")


def flow_run_tasks(stack: Stack, flow_run_id: str) -> list[dict]:
    return api(stack, "POST", "/task_runs/filter",
               json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()


def test_map_step_on_a_local_dask_cluster(in_process, monkeypatch):
    pytest.importorskip("prefect_dask", reason="the dask extra: pip install 'stairs[dask]'")
    monkeypatch.setenv("STAIRS_TASK_RUNNER", "dask")
    monkeypatch.setenv("STAIRS_MAX_WORKERS", "1")
    state = fan_out.with_options(task_runner=task_runner())(4, return_state=True)
    pids = state.result()
    assert len(pids) == 4 and os.getpid() not in pids  # ran in the cluster's worker processes
    tasks = flow_run_tasks(in_process, str(state.state_details.flow_run_id))
    assert sorted(t["name"] for t in tasks) == ["batch-0", "batch-1", "batch-2", "batch-3"]
    assert {t["state_type"] for t in tasks} == {"COMPLETED"}


ENDPOINT = "http://127.0.0.1:9/v1"  # never contacted: the slot guards the request, not the URL


@step(name="teacher-request")
def hold_slot(index: int) -> tuple[float, float, str | None]:
    with teacher_slot(ENDPOINT, slots=1) as limit:
        start = time.monotonic()
        time.sleep(0.4)
        return start, time.monotonic(), limit


@flow(name="two-requests")
def two_requests() -> list:
    return map_step(hold_slot, range(3))


def test_teacher_slot_serializes_requests_to_one_endpoint(in_process):
    spans = two_requests.with_options(task_runner=task_runner())()
    assert {limit for *_, limit in spans} == {"teacher-127.0.0.1-9-v1"}
    spans = sorted((a, b) for a, b, _ in spans)
    # With one slot, no two requests to the endpoint overlap, though three threads were free.
    assert all(prev_end <= start for (_, prev_end), (start, _) in zip(spans, spans[1:]))
    limit = api(in_process, "GET", "/v2/concurrency_limits/teacher-127.0.0.1-9-v1").json()
    assert limit["limit"] == 1 and limit["active_slots"] == 0


@flow(name="report-progress")
def report_progress(total: int) -> str:
    from flows.artifacts import progress

    bar = progress("generate", "batches", total=total, min_interval_s=0)
    for _ in range(total):
        bar.advance()
    return str(bar.artifact_id)


def test_progress_artifact_reaches_100(in_process):
    artifact_id = report_progress(5)
    art = api(in_process, "GET", f"/artifacts/{artifact_id}").json()
    assert art["type"] == "progress" and art["key"] == "generate-batches-progress"
    assert float(art["data"]) == 100.0


# Last on purpose: it stops the worker, and serving re-registers the `ingest` deployment.
def test_serve_flows_runs_a_deployment_without_a_worker(stack, tiny_curriculum):
    stop(stack.worker)  # from here on only the serving process can execute runs
    server = stack.start("serve", [sys.executable, "-m", "flows.cli", "serve-flows",
                                   "--name", "ingest", "--api-url", stack.api])

    def served():
        assert server.poll() is None, stack.log("serve")
        return "serving ingest" in stack.log("serve")

    wait_until(served, 120, "stairs serve-flows", interval=1)
    dep_id = deployment_id(stack, "ingest", "ingest")
    r = quick_run(stack, dep_id, {"params": {"curriculum": str(tiny_curriculum)}})
    assert r.status_code == 201, r.text
    run = wait_for_run(stack, r.json()["id"])
    assert run["state_type"] == "COMPLETED", (run["state"], stack.log("serve"))
    stop(server)
