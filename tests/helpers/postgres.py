"""A real PostgreSQL server (Debian's `postgresql` package) on a loopback port in a temporary
folder, for the tests that put the catalog on it. Skips cleanly without initdb/pg_ctl."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    # Debian keeps the server binaries off PATH, under the major version's folder.
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_postgres_user() -> list[str] | None:
    """initdb refuses to run as root: run the server as Debian's `postgres` user then."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--"] if runuser else None


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yields the server's SQLAlchemy URL; stops it and removes its folder afterwards."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    prefix = _as_postgres_user()
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    if prefix is None:
        pytest.skip("running as root without a 'postgres' user to run the server as")
    pytest.importorskip("psycopg", reason="the postgres extra: pip install 'stairs[postgres]'")
    # Not under pytest's tmp: that folder is private to root and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="stairs-pg-"))
    data = folder / "data"
    if prefix:
        shutil.chown(folder, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(prefix + [initdb, "-D", str(data), "-U", "stairs", "--auth=trust",
                             "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    started = subprocess.run(prefix + [pg_ctl, "-D", str(data), "-o", options, "-w", "-t", "60",
                                       "-l", str(folder / "server.log"), "start"],
                             capture_output=True, text=True)
    try:
        assert started.returncode == 0, started.stdout + started.stderr + (
            (folder / "server.log").read_text() if (folder / "server.log").exists() else "")
        yield f"postgresql+psycopg://stairs@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
