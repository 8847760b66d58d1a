import os

import pytest

from flows import settings


def test_stairs_home_relocates_everything(stairs_home):
    assert settings.stairs_home() == stairs_home.resolve()
    assert settings.catalog_url() == f"sqlite:///{stairs_home.resolve() / 'catalog.db'}"
    assert settings.shards_root().parent == stairs_home.resolve()
    assert settings.models_root().parent == stairs_home.resolve()


def test_catalog_url_override(monkeypatch):
    monkeypatch.setenv("STAIRS_CATALOG_URL", "postgresql+psycopg://u@127.0.0.1:5/db")
    assert settings.catalog_url() == "postgresql+psycopg://u@127.0.0.1:5/db"


def test_prefect_defaults_offline_and_under_home(monkeypatch, stairs_home):
    for var in ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED"):
        monkeypatch.delenv(var, raising=False)
    settings.configure_prefect()
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["PREFECT_HOME"] == str(stairs_home.resolve() / "prefect")


def test_users_prefect_server_is_respected(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    settings.configure_prefect()
    assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert "PREFECT_HOME" not in os.environ


def test_run_scope_finishes_only_runs_it_made(workspace):
    from flows.spec import Curriculum

    spec = Curriculum.model_validate({"name": "t", "corpus": {"format": "demo"}})
    with workspace.run_scope(None, lambda: workspace.start_run(spec, "t").id) as ok:
        pass
    assert workspace.catalog.get_run(ok.id).status == "completed"
    try:
        with workspace.run_scope(None, lambda: workspace.start_run(spec, "t").id) as bad:
            raise ValueError("boom")
    except ValueError:
        pass
    assert workspace.catalog.get_run(bad.id).status == "failed"
    assert workspace.catalog.get_run(bad.id).error == "ValueError: boom"
    theirs = workspace.start_run(spec, "t").id
    with workspace.run_scope(theirs, lambda: "unused") as scope:
        scope.status = "stopped"
    assert workspace.catalog.get_run(theirs).status == "running"  # its owner finishes it


def test_cpu_threads_defaults_to_every_core_and_obeys_stairs_threads(monkeypatch):
    import os

    from flows.settings import cpu_threads

    monkeypatch.delenv("STAIRS_THREADS", raising=False)
    assert cpu_threads() == (os.cpu_count() or 1)
    monkeypatch.setenv("STAIRS_THREADS", "1")
    assert cpu_threads() == 1
    for bad in ("0", "two"):
        monkeypatch.setenv("STAIRS_THREADS", bad)
        with pytest.raises(ValueError, match="STAIRS_THREADS"):
            cpu_threads()


def test_row_process_min_defaults_obeys_the_environment_and_names_a_bad_value(monkeypatch):
    from flows.generate.rowproc import MIN_REQUESTS, worth_a_row_process

    monkeypatch.delenv("STAIRS_ROW_PROCESS_MIN", raising=False)
    assert not worth_a_row_process(MIN_REQUESTS - 1) and worth_a_row_process(MIN_REQUESTS)
    monkeypatch.setenv("STAIRS_ROW_PROCESS_MIN", "0")  # off
    assert not worth_a_row_process(10_000)
    monkeypatch.setenv("STAIRS_ROW_PROCESS_MIN", "1")
    assert worth_a_row_process(1)
    for bad in ("-1", "many"):
        monkeypatch.setenv("STAIRS_ROW_PROCESS_MIN", bad)
        with pytest.raises(ValueError, match="STAIRS_ROW_PROCESS_MIN='.*': expected a whole"):
            worth_a_row_process(100)


def test_server_launched_before_the_checks_is_the_one_flows_use(stairs_home):
    """A flow command launches its temporary Prefect server before it checks the curriculum
    and imports its stage, so the server comes up meanwhile; start() then waits for that same
    process instead of starting a second one. In a child process: start() points this
    process's Prefect settings at the server it stops."""
    import subprocess
    import sys

    script = (
        "import httpx\n"
        "from flows import prefect_server as ps\n"
        "ps.launch(); first = ps._process.pid; ps.launch()\n"
        "assert ps._process.pid == first, 'launched twice'\n"
        "url = ps.start()\n"
        "assert ps._process.pid == first and url.endswith(f':{ps._port}/api'), url\n"
        "assert httpx.get(url + '/health').status_code == 200\n"
        "ps.stop(); print('one server', first)\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["STAIRS_HOME"] = str(stairs_home)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0 and "one server" in done.stdout, done.stderr[-2000:]
