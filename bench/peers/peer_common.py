"""Shared by the peer runners (each runs in its own venv under /work/bench-venvs/<tool>, without
stairs installed): arguments, the workload, and the one-line JSON report.

Workload: N distinct chat requests (one user message each, a demo-style counting problem with a
unique name, so no tool can answer one request from another's cache) sent to an OpenAI-compatible
base_url with at most C in flight, as each tool is normally used.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import string
import sys
import time


def parse_args(tool: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=f"Send N chat completions through {tool}.")
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8911/v1")
    ap.add_argument("--model", default="fake")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--workdir", default=None, help="Where the tool may keep its cache/output.")
    ap.add_argument("--prompts", default=None,
                    help="JSONL of {'messages': [...]} to send instead of the built-in workload.")
    return ap.parse_args()


def _name(i: int) -> str:
    # Letters only, capitalized: the fake server's demo solver matches names as [A-Z][a-z]+.
    letters = string.ascii_lowercase
    s = ""
    i += 26 * 26
    while i:
        i, r = divmod(i, 26)
        s = letters[r] + s
    return "Q" + s


def workload(args) -> list[list[dict]]:
    if args.prompts:
        with open(args.prompts, encoding="utf-8") as f:
            return [json.loads(line)["messages"] for line in f if line.strip()][: args.n]
    return [[{"role": "user", "content":
              f"Text: {_name(i)} has {i % 9 + 1} red kites and {i % 7 + 1} blue kites.\n\n"
              f"Question: How many kites does {_name(i)} have in total?"}]
            for i in range(args.n)]


class Meter:
    """Wall time, CPU seconds (this process and its children) and peak RSS of the client."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.c0 = self._cpu()
        return self

    @staticmethod
    def _cpu() -> float:
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = self._cpu() - self.c0
        s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        self.peak_rss_mb = max(s.ru_maxrss, c.ru_maxrss) / 1024  # Linux: KiB
        return False


def report(tool: str, version: str, args, meter: Meter, completed: int, failed: int,
           **extra) -> None:
    doc = {"tool": tool, "version": version, "n": args.n, "concurrency": args.concurrency,
           "completed": completed, "failed": failed, "wall_s": round(meter.wall, 3),
           "completions_per_s": round(completed / meter.wall, 2) if meter.wall else None,
           "client_cpu_s": round(meter.cpu, 2), "peak_rss_mb": round(meter.peak_rss_mb, 1),
           "pid": os.getpid(), **extra}
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
