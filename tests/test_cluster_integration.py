"""Stage work on a cluster, for real: a Prefect server and a Dask cluster (a scheduler and two
worker processes, started as `dask scheduler` / `dask worker` would be) on 127.0.0.1, the
generate and curate flows run in this process with STAIRS_TASK_RUNNER=dask and
STAIRS_TASK_RUNNER_ADDRESS pointing at the scheduler, against the loopback fake OpenAI server.

The batches must run in the workers (the stage summary records each batch's process, written
by the batch itself), every row must be asked for and written exactly once, and the shards
must hold exactly what a thread-runner run of the same curriculum writes. Every process we
start is stopped by its process group, also when a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers.gen_helpers import generated, write_curriculum
from tests.helpers.openai_server import FakeOpenAI, free_port
from tests.helpers.postgres import postgres_server
from tests.test_deploy_integration import stop, wait_until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ROWS, BATCH = 24, 6


class Processes:
    def __init__(self, tmp: Path):
        self.tmp, self.procs = tmp, []

    def start(self, name: str, cmd: list[str], env: dict) -> subprocess.Popen:
        with open(self.tmp / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    cleanup = staticmethod(lambda: None)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        self.cleanup()


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "STAIRS_"))}
    env.update({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONPATH": str(ROOT),
                "PREFECT_LOGGING_LEVEL": "WARNING", **extra})
    return env


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster-prefect")
    procs = Processes(tmp)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    try:
        server = procs.start("server", [sys.executable, "-m", "prefect", "server", "start",
                                        "--host", "127.0.0.1", "--port", str(port)],
                             clean_env(PREFECT_HOME=str(tmp / "prefect-home")))

        def healthy():
            if server.poll() is not None:
                raise RuntimeError("prefect server exited:\n" + procs.log("server"))
            return httpx.get(api + "/health", timeout=2).status_code == 200

        wait_until(healthy, 180, "prefect server")
        yield api
    finally:
        procs.stop_all()


@pytest.fixture
def in_server(prefect_api, monkeypatch):
    """Flows run in this process talk to the module's server (so do the cluster's workers)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        yield prefect_api
        APILogHandler().flush()
        EventsWorker.drain_all(timeout=10)


def start_dask(tmp: Path, env: dict, workers: int = 2) -> tuple[str, Processes]:
    """A scheduler and `workers` worker processes (one thread each) on loopback."""
    procs = Processes(tmp)
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    procs.start("scheduler", dask + ["--host", "127.0.0.1", "--port", str(port),
                                     "--no-dashboard"], env)
    for i in range(workers):
        procs.start(f"worker-{i}", [sys.executable, "-m", "distributed.cli.dask_worker",
                                    address, "--host", "127.0.0.1", "--nthreads", "1",
                                    "--nworkers", "1", "--name", f"stairs-w{i}",
                                    "--no-dashboard", "--no-nanny"], env)
    from distributed import Client

    def ready():
        with Client(address, timeout=5) as client:
            return len(client.scheduler_info()["workers"]) == workers

    try:
        wait_until(ready, 120, "dask workers", interval=1)
    except Exception:
        procs.stop_all()
        raise RuntimeError("dask cluster did not start:\n" + procs.log("scheduler")
                           + procs.log("worker-0")) from None
    return address, procs


def run_stages(curriculum: Path, home: Path, monkeypatch, runner: str):
    """generate then curate, as flow runs in this process, with the given task runner."""
    from flows.curate.flow import curate_flow
    from flows.generate.flow import generate_flow
    from flows.orchestration import task_runner
    from flows.params import RoundParams, StageParams
    from flows.workspace import Workspace

    monkeypatch.setenv("STAIRS_HOME", str(home))
    monkeypatch.setenv("STAIRS_TASK_RUNNER", runner)
    gen = generate_flow.with_options(task_runner=task_runner())(
        StageParams(curriculum=str(curriculum)))
    cur = curate_flow.with_options(task_runner=task_runner())(
        RoundParams(curriculum=str(curriculum), run_id=gen.run_id))
    ws = Workspace.open()
    rows = generated(ws, gen.run_id).sort("id")
    stage = ws.latest_stage("curate", run_id=gen.run_id)
    curated = {kind: ws.store.scan(ws.shards(stage, kind)).collect().sort("id")
               for kind in ("kept", "dropped", "train")}
    ws.catalog.engine.dispose()
    return gen, cur, rows, curated


def start_ray(tmp: Path, env: dict) -> tuple[str, Processes]:
    """A Ray head on loopback with 2 CPUs (so two tasks, in two worker processes, at once)."""
    procs = Processes(tmp)
    port = free_port()
    temp = Path("/tmp") / f"ray-{port}"  # Ray's socket paths must stay short
    procs.start("ray", [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                        "--node-ip-address", "127.0.0.1", "--port", str(port),
                        "--num-cpus", "2", "--include-dashboard", "false",
                        "--object-store-memory", str(100 * 1024 * 1024),
                        "--disable-usage-stats", "--temp-dir", str(temp)], env)
    address = f"127.0.0.1:{port}"

    def ready():
        assert procs.procs[0].poll() is None, procs.log("ray")
        return "Ray runtime started" in procs.log("ray")

    try:
        wait_until(ready, 120, "ray head", interval=1)
    except Exception:
        procs.stop_all()
        raise
    procs.cleanup = lambda: shutil.rmtree(temp, ignore_errors=True)
    return address, procs


CLUSTERS = {"dask": ("prefect_dask", start_dask), "ray": ("prefect_ray", start_ray)}


@pytest.mark.parametrize("kind", ["dask", "ray"])
def test_generate_and_curate_on_a_cluster_match_the_thread_runner(
        kind, in_server, tmp_path, monkeypatch):
    extra, start_cluster = CLUSTERS[kind]
    pytest.importorskip(extra, reason=f"the {kind} extra: pip install 'stairs[{kind}]'")
    curriculum = write_curriculum(tmp_path, "http://placeholder/v1", rows=ROWS,
                                  teacher={"concurrency": 2},
                                  generate={"batch_requests": BATCH, "batch_rows": BATCH})
    # 6-row shards either way (a cluster batch writes one; the thread run, one batch, writes
    # one every 6 rows); two shards per curation partition.
    doc = yaml.safe_load(curriculum.read_text())
    doc["curation"] = {"partition_rows": 2 * BATCH, "require_gold_match": False}
    results = {}
    for runner in ("thread", kind):
        home = tmp_path / f"home-{runner}"
        with FakeOpenAI(latency=0.02) as srv:
            doc["teacher"]["base_url"] = srv.base_url
            curriculum.write_text(yaml.safe_dump(doc))
            procs = None
            if runner != "thread":
                address, procs = start_cluster(tmp_path, clean_env(
                    PREFECT_API_URL=in_server, STAIRS_HOME=str(home)))
                monkeypatch.setenv("STAIRS_TASK_RUNNER_ADDRESS", address)
            try:
                results[runner] = run_stages(curriculum, home, monkeypatch, runner)
            finally:
                if procs is not None:
                    procs.stop_all()
            # Every request reached the teacher exactly once.
            assert len(srv.received) == ROWS and set(srv.received.values()) == {1}

    gen_t, cur_t, rows_t, curated_t = results["thread"]
    gen_c, cur_c, rows_c, curated_c = results[kind]
    for gen, rows in ((gen_t, rows_t), (gen_c, rows_c)):
        assert gen.complete and gen.rows_written == ROWS == rows.height
        assert rows["id"].n_unique() == ROWS  # every row exactly once
    # In the flow's own process all requests go as one batch (one request loop is fastest
    # there); on the cluster, in batches of BATCH, run in the workers (each says where).
    assert [b["batch"] for b in gen_t.batches] == [0]
    assert sorted(b["batch"] for b in gen_c.batches) == list(range(ROWS // BATCH))
    pids = {b["pid"] for b in gen_c.batches}
    assert os.getpid() not in pids and len(pids) >= 2, gen_c.batches
    workers = {b["worker"] for b in gen_c.batches}
    if kind == "dask":
        assert workers <= {"stairs-w0", "stairs-w1"}
    else:
        assert all(w.startswith("ray:") for w in workers) and len(workers) >= 2
    assert {b["pid"] for b in gen_t.batches} == {os.getpid()}
    # Curation's per-row work ran per partition in the workers too; votes and dedup globally.
    for cur in (cur_t, cur_c):
        assert sorted(p["partition"] for p in cur.partitions) == [0, 1]
        assert sum(p["rows"] for p in cur.partitions) == ROWS == cur.kept + cur.dropped
    assert os.getpid() not in {p["pid"] for p in cur_c.partitions}
    # Same shard contents either way (every column).
    assert rows_t.equals(rows_c)
    for kind_ in ("kept", "dropped", "train"):
        assert curated_t[kind_].equals(curated_c[kind_]), kind_
    assert cur_t.kept == cur_c.kept > 0 and cur_t.drops_by_reason == cur_c.drops_by_reason


def generate_cli(curriculum: Path, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", "generate", str(curriculum),
                                 "--json"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def test_two_runs_at_once_share_the_endpoint_limit(prefect_api, tmp_path):
    """Two `stairs generate` processes at once, each allowed 4 requests in flight, against one
    endpoint whose limit has 2 slots: the endpoint never sees more than 2 at once."""
    slots, rows = 2, 24
    env = clean_env(PREFECT_API_URL=prefect_api, STAIRS_HOME=str(tmp_path / "home"),
                    STAIRS_TEACHER_SLOTS=str(slots))
    with FakeOpenAI(latency=0.4) as srv:
        procs = []
        for i in (1, 2):  # other sampling seeds: other requests, no shared cache hits
            folder = tmp_path / f"run-{i}"
            folder.mkdir()
            curriculum = write_curriculum(folder, srv.base_url, rows=rows, name=f"limit-{i}",
                                          teacher={"concurrency": 4, "seed": i},
                                          generate={"batch_requests": 4})
            procs.append(generate_cli(curriculum, env, tmp_path / f"run-{i}.log"))
        try:
            for i, proc in enumerate(procs, 1):
                assert proc.wait(240) == 0, (tmp_path / f"run-{i}.log").read_text()[-3000:]
        finally:
            for proc in procs:
                stop(proc)
        results = [json.loads((tmp_path / f"run-{i}.log").read_text()[
            (tmp_path / f"run-{i}.log").read_text().index("{"):]) for i in (1, 2)]
        assert sum(srv.received.values()) == 2 * rows and set(srv.received.values()) == {1}
        assert srv.max_in_flight == slots  # bounded by the limit, and the limit was used
    name = "teacher-" + srv.base_url.split("://")[1].replace(":", "-").replace("/", "-")
    spans = []
    for r in results:
        assert r["complete"] and r["rows_written"] == rows
        assert {b["limit"] for b in r["batches"]} == {name}
        spans.append((min(b["started_at"] for b in r["batches"]),
                       max(b["started_at"] + b["seconds"] for b in r["batches"])))
    (a0, a1), (b0, b1) = spans
    assert a0 < b1 and b0 < a1, spans  # the two runs did overlap
    limit = httpx.get(f"{prefect_api}/v2/concurrency_limits/{name}").json()
    assert limit["limit"] == slots and limit["active_slots"] == 0


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """A real S3-compatible server on loopback (moto's, from the `moto[server]` package) with
    one bucket; yields the environment that points s3fs/botocore at it."""
    pytest.importorskip("s3fs", reason="the s3 extra: pip install 'stairs[s3]'")
    pytest.importorskip("moto.server", reason="moto[server] (a test dependency)")
    tmp = tmp_path_factory.mktemp("s3")
    procs = Processes(tmp)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "stairs-test",
           "AWS_SECRET_ACCESS_KEY": "stairs-test", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        server = procs.start("moto", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                      "-p", str(port)], clean_env())

        def up():
            assert server.poll() is None, procs.log("moto")
            return httpx.get(endpoint, timeout=2).status_code < 500

        wait_until(up, 60, "moto S3 server")
        import s3fs

        s3fs.S3FileSystem(endpoint_url=endpoint, key=env["AWS_ACCESS_KEY_ID"],
                          secret=env["AWS_SECRET_ACCESS_KEY"]).mkdir("stairs-test")
        yield env
    finally:
        procs.stop_all()


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


STAIRCASE = {
    "name": "cluster-staircase",
    "corpus": {"format": "demo", "demo": {"rows": 24, "seed": 3}, "eval_fraction": 0.25},
    "teacher": {"backend": "openai", "model": "fake", "temperature": 0.0, "concurrency": 2},
    "generate": {"batch_requests": 6, "batch_rows": 6},
    "curation": {"partition_rows": 8},
    "student": {"max_steps": 4, "batch_size": 2, "checkpoint_every": 2, "checkpoint_minutes": 0,
                "eval_rows": 2, "eval_max_new_tokens": 4, "evaluate_base": False},
    "quantization": {"gguf_types": ["Q8_0"], "int8_absmax": None, "int4_group_size": None,
                     "eval_rows": 3, "max_new_tokens": 4, "speed_tokens": 2,
                     "imatrix_tokens": 0},
    "staircase": {"rounds": 1, "gate": "threshold", "min_accuracy": 0.0, "score_teacher": False},
}


def test_a_staircase_on_postgres_s3_and_dask_completes_with_its_lineage(
        in_server, postgres_url, s3_server, tmp_path, monkeypatch):
    """The catalog on PostgreSQL, shards and models on an S3-compatible server, generate's
    batches and curate's partitions on a Dask cluster whose workers have homes of their own:
    the staircase completes, every shard and model is on S3 (checked byte for byte), a second
    home with nothing local scores the promoted file (fetched from S3), and `stairs lineage`
    walks it back to the corpus."""
    pytest.importorskip("prefect_dask", reason="the dask extra: pip install 'stairs[dask]'")
    from tests.helpers.tiny_student import save_tiny_base

    shared = {"STAIRS_CATALOG_URL": postgres_url,
              "STAIRS_SHARDS_URL": "s3://stairs-test/stairs/shards", **s3_server}
    for key, value in shared.items():
        monkeypatch.setenv(key, value)
    base = save_tiny_base(tmp_path / "tiny-base")
    address, procs = start_dask(tmp_path, clean_env(
        PREFECT_API_URL=in_server, STAIRS_HOME=str(tmp_path / "worker-home"), **shared))
    monkeypatch.setenv("STAIRS_TASK_RUNNER_ADDRESS", address)
    monkeypatch.setenv("STAIRS_TASK_RUNNER", "dask")
    monkeypatch.setenv("STAIRS_HOME", str(tmp_path / "home"))
    from flows.orchestration import task_runner
    from flows.params import StaircaseParams
    from flows.staircase import staircase_flow
    from flows.workspace import Workspace
    from storage.model_store import remote_models

    try:
        with FakeOpenAI(latency=0.02) as srv:
            doc = json.loads(json.dumps(STAIRCASE))
            doc["teacher"]["base_url"] = srv.base_url
            doc["student"]["base"] = str(base)
            curriculum = tmp_path / "cluster-staircase.yaml"
            curriculum.write_text(yaml.safe_dump(doc))
            out = staircase_flow.with_options(task_runner=task_runner())(
                StaircaseParams(curriculum=str(curriculum), new=True))
            asked = sum(srv.received.values())
    finally:
        procs.stop_all()

    ws = Workspace.open()
    assert ws.catalog.engine.dialect.name == "postgresql" and ws.store.remote
    run = ws.catalog.get_run(out["run_id"])
    assert run.status == "completed", run.error
    rnd = ws.catalog.rounds(run.id)[0]
    assert rnd.gate_passed and rnd.promoted_model_id is not None
    # generate's batches and curate's partitions ran in the Dask workers, each request once.
    gen = ws.summary(ws.latest_stage("generate", run_id=run.id))
    cur = ws.summary(ws.latest_stage("curate", run_id=run.id))
    train_rows = ws.summary(ws.latest_stage("ingest", run_id=run.id))["train_rows"]
    assert asked == train_rows > 12 and set(srv.received.values()) == {1}  # each row once
    assert len(gen["batches"]) == 3 and os.getpid() not in {b["pid"] for b in gen["batches"]}
    assert {b["worker"] for b in gen["batches"]} <= {"stairs-w0", "stairs-w1"}
    assert os.getpid() not in {p["pid"] for p in cur["partitions"]}
    # Every shard of the run is on S3 and matches its catalog checksum.
    shards = ws.catalog.run_shards(run.id)
    assert shards and all(str(ws.store.path(s)).startswith("s3://stairs-test/stairs/shards/")
                          for s in shards)
    assert all(ws.store.verify(s) for s in shards)
    # Every model the run made is on S3 (manifest last), byte for byte as written here.
    remote = remote_models()
    assert remote.url == "s3://stairs-test/stairs/models"
    made = [m for m in ws.catalog.models(run.id) if m.kind in ("student", "quantized")]
    assert {m.kind for m in made} == {"student", "quantized"}
    home_models = tmp_path / "home" / "models"
    for m in made:
        manifest = remote.manifest(m.path)
        local = home_models / m.path
        files = [local / f["name"] if f["name"] else local for f in manifest["files"]]
        assert [f["sha256"] for f in manifest["files"]] == [sha256(f) for f in files], m.name
    ws.catalog.engine.dispose()

    # A second machine: a fresh home, the same catalog and bucket. It scores the promoted file
    # (fetched from S3 into its own models folder) and reads the lineage.
    second = clean_env(STAIRS_HOME=str(tmp_path / "second-home"), **shared)
    promoted = rnd.promoted_model_id
    evaluated = subprocess.run(
        [sys.executable, "-m", "flows.cli", "eval", f"catalog:{promoted}", "--curriculum",
         str(curriculum), "--rows", "2", "--json"], cwd=ROOT, env=second, capture_output=True,
        text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stdout[-2000:] + evaluated.stderr[-3000:]
    q8 = next(m for m in made if m.id == promoted)
    fetched = tmp_path / "second-home" / "models" / q8.path
    assert sha256(fetched) == remote.manifest(q8.path)["files"][0]["sha256"]
    shown = subprocess.run([sys.executable, "-m", "flows.cli", "lineage", f"catalog:{promoted}",
                            "--json"], cwd=ROOT, env=second, capture_output=True, text=True,
                           timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    lineage = json.loads(shown.stdout)
    assert [m["kind"] for m in lineage["models"]] == ["quantized", "student", "base"]
    by_id = {s["id"]: s for s in lineage["shards"]}
    assert {by_id[i]["kind"] for i in lineage["models"][1]["trained_on"]} == {"train"}
    assert {s["stage"] for s in lineage["shards"]} >= {"ingest", "generate", "curate"}
    generated = [s for s in lineage["shards"] if s["kind"] == "generated"]
    assert len(generated) == 3 and all(by_id[p]["stage"] == "ingest"
                                       for s in generated for p in s["parents"])


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
