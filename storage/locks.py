"""Run locks: one process at a time works in a run.

Two `stairs generate` (or `stairs run`) of one curriculum on one catalog used to join the same
run, pay for the same requests twice and mark each other's live stages failed. Now the first
process holds the run's row in the `runlock` table and the second is refused with a message
naming the holder (RunLocked).

The lock is a plain row (insert to take, delete to give back), so it works the same on SQLite
and PostgreSQL, for processes on one machine or many sharing a catalog. A holder that dies
without giving the lock back does not block forever:
- on the same host, the row's process is gone (or its pid now belongs to a process started
  after the holder last renewed the row);
- on any host, the holder renews `heartbeat` every HEARTBEAT_S seconds, and a row not renewed
  for LEASE_S seconds is stale (hosts' clocks must agree to well within the lease).
A stale row is deleted (only the very row seen, by its token) and taken over.

A process may enter a run it already holds (reentrant): stage flows called inside a staircase
share its lock.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from storage.tables import RunLock

LEASE_S = 60.0
HEARTBEAT_S = 10.0
TABLE = RunLock.__table__


class RunLocked(RuntimeError):
    """Another live process works in this run; the message names it."""


def this_process() -> tuple[str, int, float]:
    return socket.gethostname(), os.getpid(), psutil.Process().create_time()


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python",
                     *sys.argv[1:]])[:200]


# A process's start time as psutil reads it is the boot time the kernel reports now plus the
# ticks since boot, and that boot time moves whenever the clock is stepped (NTP, a VM syncing
# with its host). Measured on a build VM: a live run's start read 3.0 s later than the value
# it had recorded an hour before, so a 1 s comparison took it for a reused pid and the next
# `stairs show` marked the live run failed. Readings this far apart count as the same process.
CLOCK_SLACK_S = 30.0


def alive(lock: RunLock, now: float | None = None) -> bool:
    """Could the holder still be working?"""
    if (now or time.time()) - lock.heartbeat > LEASE_S:
        return False
    if lock.host == socket.gethostname():
        try:
            started = psutil.Process(lock.pid).create_time()
        except psutil.NoSuchProcess:
            return False
        # The pid is the holder's unless a process started after the holder's last
        # heartbeat took it (the holder was alive, with that pid, when it beat): a reused pid.
        return started <= lock.heartbeat + CLOCK_SLACK_S
    return True


def describe(lock: RunLock) -> str:
    age = max(0, int(time.time() - lock.heartbeat))
    return (f"pid {lock.pid} on {lock.host} ({lock.command}; since "
            f"{time.strftime('%H:%M:%S', time.localtime(lock.acquired))}, last heard from "
            f"{age} s ago)")


@dataclass
class _Held:
    token: str
    count: int
    stop: threading.Event


# Locks this process holds, by (catalog URL, run id): what makes the lock reentrant.
_HELD: dict[tuple[str, str], _Held] = {}
_HELD_GUARD = threading.Lock()


class RunLocks:
    def __init__(self, engine, url: str):
        self.engine, self.url = engine, url

    def holder(self, run_id: str) -> RunLock | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(TABLE).where(TABLE.c.run_id == run_id)).first()
        return RunLock(**row._mapping) if row else None

    def acquire(self, run_id: str) -> None:
        """Hold `run_id`, or raise RunLocked naming the live process that holds it."""
        key = (self.url, run_id)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                held.count += 1
                return
            host, pid, started = this_process()
            token = secrets.token_hex(8)
            for _ in range(3):  # insert; or delete the stale row we saw, then insert again
                now = time.time()
                try:
                    with self.engine.begin() as conn:
                        conn.execute(insert(TABLE).values(
                            run_id=run_id, token=token, host=host, pid=pid,
                            process_started=started, command=command_line(), acquired=now,
                            heartbeat=now))
                    break
                except IntegrityError:
                    current = self.holder(run_id)
                    if current is not None and alive(current):
                        raise RunLocked(f"run {run_id} is in use by {describe(current)}; wait "
                                        "for it to end or stop it, then run again") from None
                    if current is not None:
                        with self.engine.begin() as conn:
                            conn.execute(delete(TABLE).where(TABLE.c.run_id == run_id,
                                                             TABLE.c.token == current.token))
            else:
                raise RunLocked(f"run {run_id}: another process keeps taking its lock")
            stop = threading.Event()
            _HELD[key] = _Held(token, 1, stop)
        threading.Thread(target=self._beat, args=(run_id, token, stop), daemon=True,
                         name=f"stairs-lock-{run_id}").start()

    def release(self, run_id: str) -> None:
        key = (self.url, run_id)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is None:
                return
            held.count -= 1
            if held.count > 0:
                return
            del _HELD[key]
        held.stop.set()
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(TABLE).where(TABLE.c.run_id == run_id,
                                                 TABLE.c.token == held.token))
        except SQLAlchemyError:
            pass  # a catalog that cannot be written: the row goes stale when this process ends

    def _beat(self, run_id: str, token: str, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                with self.engine.begin() as conn:
                    renewed = conn.execute(update(TABLE).where(
                        TABLE.c.run_id == run_id, TABLE.c.token == token).values(
                        heartbeat=time.time())).rowcount
            except SQLAlchemyError:
                continue  # a busy or briefly unwritable catalog: try again next beat
            if not renewed:
                print(f"stairs: lost the lock of run {run_id} (another process took it over "
                      "after missing heartbeats)", file=sys.stderr)
                return
