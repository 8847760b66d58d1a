"""Client-side limits for remote teachers: an adaptive in-flight cap, per-minute rate limits and
retry backoff. Written here (about 100 lines) rather than taken from a library because the three
must share one asyncio loop and react to the endpoint's own signals (429, Retry-After, 503)."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import math
import random
import time


class AdaptiveLimit:
    """How many requests may be in flight (the dispatcher reads `limit`). AIMD: a saturation
    signal (429, 503, timeout) halves the limit, at most once per `cooldown` seconds so a burst
    of failures from one overload counts once; every `limit` successes in a row add one back,
    up to `ceiling`."""

    def __init__(self, ceiling: int, *, adaptive: bool = True, cooldown: float = 1.0):
        self.ceiling = ceiling
        self.limit = ceiling
        self.adaptive = adaptive
        self.cooldown = cooldown
        self.lowest = ceiling
        self._streak = 0
        self._last_cut = 0.0

    def success(self) -> None:
        if not self.adaptive or self.limit >= self.ceiling:
            return
        self._streak += 1
        if self._streak >= self.limit:
            self._streak = 0
            self.limit += 1

    def saturated(self) -> None:
        if not self.adaptive:
            return
        now = time.monotonic()
        if now - self._last_cut < self.cooldown:
            return
        self._last_cut = now
        self._streak = 0
        self.limit = max(1, self.limit // 2)
        self.lowest = min(self.lowest, self.limit)


class PerMinute:
    """A token bucket refilled continuously: `per_minute` units, bursting up to one minute's worth.
    A charge larger than the bucket waits for a full bucket instead of forever."""

    def __init__(self, per_minute: int | None):
        self.rate = per_minute / 60.0 if per_minute else None
        self.capacity = float(per_minute or 0)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, amount: float = 1.0) -> None:
        if self.rate is None:
            return
        amount = min(amount, self.capacity)
        async with self._lock:
            while True:
                now = time.monotonic()
                self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.level >= amount:
                    self.level -= amount
                    return
                await asyncio.sleep((amount - self.level) / self.rate)


def backoff_delay(attempt: int, retry_after: float | None, *, base: float = 0.5,
                  cap: float = 60.0) -> float:
    """Seconds to wait before retry `attempt` (1-based): the server's Retry-After when it gave
    one, else exponential with full jitter (spreads a thundering herd of retries)."""
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    return random.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def parse_retry_after(headers) -> float | None:
    """Seconds the server asks us to wait, or None. RFC 9110 section 10.2.3: Retry-After is
    delay-seconds or an HTTP-date; OpenAI-style APIs also send fractional seconds and
    retry-after-ms. Anything not finite and non-negative (nan, inf, -1, garbage) is ignored:
    a nan slept on is a request that never returns. A date is read against our clock and
    bounded below by 0; backoff_delay() bounds every wait above by its cap."""
    if headers is None:
        return None
    for name in ("retry-after-ms", "retry-after"):
        value = headers.get(name)
        if value is None:
            continue
        seconds = _seconds(value.strip()) if name == "retry-after" else _number(value)
        if seconds is not None:
            return seconds / 1000.0 if name == "retry-after-ms" else seconds
    return None


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _seconds(value: str) -> float | None:
    number = _number(value)
    if number is not None:
        return number
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT; "-0000" parses as naive
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
