"""Where stairs keeps its state, and how Prefect is set up before any flow runs.

One environment variable, STAIRS_HOME, relocates everything: catalog database, shards, models,
response cache and (unless the user points Prefect elsewhere) Prefect's own home.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path("~/.stairs")
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def stairs_home() -> Path:
    home = Path(os.environ.get("STAIRS_HOME", DEFAULT_HOME)).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def catalog_url() -> str:
    """STAIRS_CATALOG_URL takes any SQLAlchemy URL (postgresql+psycopg://...); SQLite by default."""
    url = os.environ.get("STAIRS_CATALOG_URL")
    return url or f"sqlite:///{stairs_home() / 'catalog.db'}"


def shards_root() -> Path:
    return stairs_home() / "shards"


def shards_location() -> str | Path:
    """STAIRS_SHARDS_URL puts shards on any fsspec filesystem (s3://bucket/prefix, gs://...);
    the local folder STAIRS_HOME/shards by default."""
    return os.environ.get("STAIRS_SHARDS_URL") or shards_root()


def models_root() -> Path:
    """This machine's model files: what it wrote, and its copies of models on shared storage."""
    return stairs_home() / "models"


def models_location() -> str | None:
    """Shared storage for model files (storage/model_store.py): STAIRS_MODELS_URL, else, when
    shards are on a remote store, a `models` folder beside theirs (STAIRS_SHARDS_URL
    s3://bucket/stairs/shards -> s3://bucket/stairs/models); None keeps models local."""
    url = os.environ.get("STAIRS_MODELS_URL")
    if url:
        return url
    shards = os.environ.get("STAIRS_SHARDS_URL")
    if not shards or "://" not in shards or shards.startswith(("file://", "local://")):
        return None
    scheme, path = shards.split("://", 1)
    parent = path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else path
    return f"{scheme}://{parent.rstrip('/')}/models"


def cpu_threads() -> int:
    """Threads for llama.cpp (teacher server, evaluation, measurement): STAIRS_THREADS, else every
    core. llama.cpp's own default is half the cores, which left the quickstart 1.5x slower on an
    idle 2-core machine (Q8_0 student, 0.58 vs 0.94 s per eval row). On a machine other jobs
    oversubscribe, set STAIRS_THREADS=1: llama.cpp's threads spin-wait on each other, and two of
    them ran 10x slower than one under a load average of 10 (measured on the build machine)."""
    return _whole_number("STAIRS_THREADS", os.cpu_count() or 1, least=1, of="threads")


def row_process_min(default: int) -> int:
    """Requests a generate batch must send before its rows are built in a row process
    (flows/generate/rowproc.py): STAIRS_ROW_PROCESS_MIN, else `default`; 0 turns it off."""
    return _whole_number("STAIRS_ROW_PROCESS_MIN", default, least=0, of="requests",
                         note=" (0: never)")


def _whole_number(name: str, default: int, *, least: int, of: str, note: str = "") -> int:
    """The environment variable `name` as a whole number >= `least` (`default` when unset or
    empty); anything else is one ValueError naming the variable and its value."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        raise ValueError(f"{name}={value!r}: expected a whole number of {of} >= {least}{note}")
    return number


def configure_prefect() -> None:
    """Defaults that make Prefect work offline with no server, without overriding the user.

    With no PREFECT_API_URL, a temporary local server runs per process (the CLI starts its own,
    flows/prefect_server.py; elsewhere Prefect does). Analytics off: these machines have no
    internet and the telemetry call otherwise errors and holds a lock.
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # ...but a flow's own lines (its prints, "Finished in state ...") stay visible, on the
    # console and in the UI's flow-run log: they are how a long staircase shows where it is.
    os.environ.setdefault("PREFECT_LOGGING_LOGGERS_PREFECT_FLOW_RUNS_LEVEL", "INFO")
    # The temporary server migrates its database on first start; on 2 busy cores that can take
    # longer than Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if "PREFECT_API_URL" not in os.environ and "PREFECT_HOME" not in os.environ:
        os.environ["PREFECT_HOME"] = str(stairs_home() / "prefect")
