"""Answer journals: where a generate batch records each teacher answer the moment it arrives,
when the catalog is a SQLite file. The answers reach the response cache table later, many per
transaction (ResponseCacheStore.fold); the journal is what makes that safe.

Why not commit each arrival to the catalog: at 20 ms latency answers arrive 2-4 at a time, so a
4,000-request run made 1,100-2,000 SQLite commits, 13% of the request loop's py-spy samples
(bench/teacher_throughput.py --regime cpu); one os.write() of the same answers costs a few
microseconds, and the bench's stairs/bare-loop ratio rose ~3 points with it
(docs/benchmarks.md). Durability is the same as the catalog's own (WAL, synchronous=NORMAL):
what was written survives a kill -9 of the process (the page cache keeps it), not a power cut.

One file per open journal, `<catalog.db>.answers/<host>-<pid>-<random>.jsonl`, one line per batch
of answers that arrived together: a JSON list of [key, backend, model, response_json,
prompt_tokens, completion_tokens] (the responsecache columns; created_at is the fold's time).
Its writer holds an exclusive flock on it for its whole life, which is how readers tell a live
journal (read its answers, leave it) from one whose process died (fold its answers into the
catalog, then delete it). A partly written last line is ignored.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import socket
from pathlib import Path

import orjson

SUFFIX = ".jsonl"
# A writer starts a new journal past this size; the full one goes once all of it is folded.
ROTATE_BYTES = 64 << 20


def folder_for(engine) -> Path | None:
    """The journal folder of a catalog engine, or None when journals do not apply: only a SQLite
    file catalog, whose readers all share its disk (PostgreSQL catalogs commit per arrival, as
    workers on other machines could not read a journal on this one)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(f"{database}.answers")


class Journal:
    """An open journal: append-only, locked by its writer until close()."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.path = folder / f"{name}{SUFFIX}"
        # Locked under a name readers do not look at, then renamed: a reader never finds it
        # unlocked (and takes it for a dead writer's) before the lock is held.
        opening = folder / f".{name}.new"
        self.fd = os.open(opening, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.rename(opening, self.path)
        self.size = 0

    def append(self, rows: list[tuple]) -> None:
        """One line, one write(), for the answers that arrived together."""
        data = memoryview(orjson.dumps(rows) + b"\n")
        self.size += len(data)
        while data:  # a regular file takes it all at once, short of a full disk
            data = data[os.write(self.fd, data):]

    def close(self, *, remove: bool) -> None:
        """remove=False keeps the file (its answers not yet all in the catalog) for the next
        reader to fold once this process is gone."""
        if self.fd < 0:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = -1


def parse(data: bytes) -> list[tuple]:
    rows = []
    for line in data.split(b"\n"):
        try:
            batch = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # the empty tail, or a line its writer was killed in the middle of
        if isinstance(batch, list):
            rows.extend(tuple(row) for row in batch if isinstance(row, list) and len(row) == 6)
    return rows


def read_all(folder: Path | None, fold) -> list[tuple]:
    """Every answer in the folder's journals. A dead writer's journal is handed to `fold(rows)`
    (which stores them in the catalog) and deleted; a live one's answers are returned, so a run
    that starts beside another still finds what the other has been told."""
    if folder is None or not folder.is_dir():
        return []
    live: list[tuple] = []
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # its writer finished and removed it meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                live.extend(parse(_read(fd)))
                continue
            rows = parse(_read(fd))  # its writer is gone: fold, then remove while locked
            if rows:
                fold(rows)
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    return live


def _read(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
