"""Running a coroutine from synchronous stage code, inside or outside a running event loop."""

from __future__ import annotations

import asyncio
import threading


def run_coroutine(coro):
    """asyncio.run, or in a fresh thread when this thread already runs a loop (Prefect can)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # re-raised in the caller's thread below
            box["error"] = e

    t = threading.Thread(target=target, name="stairs-teacher")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")
