"""Test defaults: every test gets its own STAIRS_HOME (catalog, shards, models, cache) in a
temporary folder, and Prefect runs offline with analytics off. Tests marked gpu skip without CUDA."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Prefect binds its console log handler to whatever sys.stderr is when it first sets up logging.
# Set it up now, on pytest's session-long stream, with the levels the CLI uses
# (flows.settings.configure_prefect): first set up inside a CliRunner.invoke, it would keep
# writing to that invoke's stream after it is closed.
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO")
import prefect.main  # noqa: E402,F401  (sets up Prefect's logging)


@pytest.fixture(scope="session")
def conversion_cache(tmp_path_factory):
    """Model conversions (the embedded GGUF as safetensors, ~30-60 s) are pure functions of the
    file's content, so one cache serves the whole session while every test keeps its own home."""
    return tmp_path_factory.mktemp("stairs-cache")


@pytest.fixture(autouse=True)
def stairs_home(tmp_path, monkeypatch, conversion_cache):
    home = tmp_path / "stairs-home"
    monkeypatch.setenv("STAIRS_HOME", str(home))
    monkeypatch.setenv("STAIRS_CACHE", str(conversion_cache))
    monkeypatch.delenv("STAIRS_CATALOG_URL", raising=False)
    monkeypatch.delenv("STAIRS_SHARDS_URL", raising=False)
    monkeypatch.delenv("STAIRS_MODELS_URL", raising=False)
    return home


@pytest.fixture(autouse=True)
def stage_results_are_complete(monkeypatch):
    """Every key a stage writes into its summary must be a field of its typed result
    (flows/results.py): readers use the fields, so a key missing there would be invisible."""
    from flows.results import StageResult

    original = StageResult.of.__func__

    def of(cls, run_id, summary, **extra):
        unknown = set(summary) - set(cls.model_fields)
        assert not unknown, f"{cls.__name__} lacks field(s) {sorted(unknown)}"
        return original(cls, run_id, summary, **extra)

    monkeypatch.setattr(StageResult, "of", classmethod(of))


@pytest.fixture
def workspace(stairs_home):
    from flows.workspace import Workspace

    return Workspace.open()


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return  # importing torch costs seconds; only pay it when a gpu test is collected
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in gpu_items:
        item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    """Stop Prefect's temporary API servers while pytest's streams are still open: left to
    Prefect's atexit hook, the "Stopping temporary server" log line is written to a stream pytest
    has already closed, and a logging traceback ends every run's output."""
    try:
        from prefect.logging.handlers import APILogWorker
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:
        return
    # Flow-run logs still queued for the API go out first: sent after the server stopped, they
    # end the output with "Error logging to API".
    APILogWorker.drain_all(timeout=10)
    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()
    from flows import prefect_server

    prefect_server.stop()  # the one a CLI command run in this process started
