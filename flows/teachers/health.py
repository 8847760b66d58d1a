"""Whether an endpoint as a whole still answers, judged from its recent requests.

A request that outlives its retries is left for the next run (one flaky prompt or connection
must not abort thousands of good requests); the run stops only when the endpoint itself is
gone: at least `share` of the last `window` finished requests failed after all their retries
(an endpoint that answers its health check but fails every chat request), or the health check
after a disconnect or timeout fails (openai_compat.py).
"""

from __future__ import annotations

from collections import deque

WINDOW = 20
SHARE = 0.5


class Health:
    def __init__(self, window: int = WINDOW, share: float = SHARE):
        self.recent: deque[bool] = deque(maxlen=window)
        self.share = share

    def record(self, answered: bool) -> None:
        self.recent.append(answered)

    def failing(self) -> bool:
        # A full window only: the first unlucky requests of a run are no verdict.
        return (len(self.recent) == self.recent.maxlen
                and self.recent.count(False) >= self.share * self.recent.maxlen)

    def describe(self) -> str:
        return (f"{self.recent.count(False)} of the last {len(self.recent)} requests failed "
                "after all their retries")
