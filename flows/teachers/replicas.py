"""Several replicas of one teacher model (`teacher.base_url` as a list): each request goes to
the replica with the most free slots (each has `concurrency` of its own); a replica whose
connection fails or times out is taken out for `teacher.replica_retry_s` seconds, then tried
again, and the request that failed on it is sent to another replica at once. Nothing is sent
twice that was answered: only requests that got no answer are sent again.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from flows.teachers.base import TeacherUnreachable
from flows.urls import redact

# Failures that say the replica itself may be gone, not that this one request was refused.
REPLICA_DOWN = ("connection", "timeout")


@dataclass
class Replica:
    url: str
    transport: object
    in_flight: int = 0
    sent: int = 0
    failures: int = 0
    out_until: float = 0.0

    def up(self, now: float) -> bool:
        return self.out_until <= now


class ReplicaPool:
    def __init__(self, urls: list[str], transports: list, limit, retry_s: float):
        self.replicas = [Replica(u, t) for u, t in zip(urls, transports)]
        self.limit, self.retry_s = limit, retry_s  # limit: the per-replica AdaptiveLimit
        self._changed = asyncio.Condition()

    async def check(self, name: str) -> None:
        """Take out the replicas that do not answer now; raise when none does."""
        problems = []
        for r in self.replicas:
            try:
                await r.transport.check(name)
            except TeacherUnreachable as e:
                problems.append(str(e))
                self.take_out(r)
        if len(problems) == len(self.replicas):
            raise TeacherUnreachable("no replica answers: " + "; ".join(problems))

    async def acquire(self) -> Replica:
        """A slot on the live replica with the most free slots (waits for one)."""
        async with self._changed:
            while True:
                now = time.monotonic()
                free = [r for r in self.replicas
                        if r.up(now) and r.in_flight < self.limit.limit]
                if free:
                    r = min(free, key=lambda r: (r.in_flight, r.sent))
                    r.in_flight += 1
                    r.sent += 1
                    return r
                back = [r.out_until for r in self.replicas if not r.up(now)]
                wait = max(0.05, min(back) - now) if back else None
                try:
                    await asyncio.wait_for(self._changed.wait(), wait)
                except asyncio.TimeoutError:
                    pass

    async def release(self, r: Replica) -> None:
        async with self._changed:
            r.in_flight -= 1
            self._changed.notify_all()

    def take_out(self, r: Replica) -> None:
        r.failures += 1
        r.out_until = time.monotonic() + self.retry_s

    def any_up(self) -> bool:
        now = time.monotonic()
        return any(r.up(now) for r in self.replicas)

    def describe(self) -> str:
        return ", ".join(f"{redact(r.url)} ({r.failures} failures)" for r in self.replicas)

    def counts(self) -> dict:
        return {redact(r.url): {"sent": r.sent, "failures": r.failures} for r in self.replicas}

    async def close(self) -> None:
        for r in self.replicas:
            await r.transport.close()
