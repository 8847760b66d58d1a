"""Teacher client throughput: how close stairs' generate stage gets to the ideal rate of an
endpoint with fixed latency, what it costs in client CPU and memory, and what it re-sends.

    PYTHONPATH=. python bench/teacher_throughput.py                  # 2,000 requests, c=64, 200 ms
    PYTHONPATH=. python bench/teacher_throughput.py --requests 300   # quick

The fake OpenAI-compatible server (tests/helpers/openai_server.py) runs in its own process on
127.0.0.1, so the client's CPU seconds are the client's alone. Ideal completions/s =
concurrency / latency. Each repetition runs the whole generate stage (cache lookups, cache
writes, row parsing, shard writes) in a fresh subprocess with a fresh STAIRS_HOME; we report
medians. Then, in the same home: a rerun (must send 0) and a one-row corpus edit (must send 1).
Peer tools (distilabel, curator, data-designer) run through bench/peers/<tool>_runner.py with
/work/bench-venvs/<tool>/bin/python when that venv exists, on the same server and rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PEERS = {"distilabel": "distilabel_runner.py", "curator": "curator_runner.py",
         "data-designer": "data_designer_runner.py"}
PEER_ROOT = Path("/work/bench-venvs")


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    from tests.helpers.openai_server import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/helpers/openai_server.py"),
                             "--port", str(port), "--latency", str(latency)])
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            httpx.get(f"{url}/models", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError("fake server did not start")


def received(url: str) -> int:
    return httpx.get(f"{url}/stats", timeout=5).json()["received"]


def write_workload(folder: Path, url: str, n: int, concurrency: int) -> Path:
    import yaml
    from gen_helpers import demo_jsonl

    demo_jsonl(folder / "corpus.jsonl", n, seed=7)
    doc = {"name": "bench", "corpus": {"path": "corpus.jsonl", "format": "jsonl",
                                       "eval_fraction": 0.0},
           "teacher": {"backend": "openai", "model": "fake", "base_url": url,
                       "concurrency": concurrency, "max_tokens": 64, "timeout": 30},
           "generate": {"batch_rows": 500}}
    path = folder / "curriculum.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def child(curriculum: str) -> None:
    """One generate run in this process; prints its measurements as JSON."""
    from flows.generate import generate
    from flows.preflight import load_checked
    from flows.workspace import Workspace

    spec = load_checked(curriculum)
    ws = Workspace.open()
    run_id = ws.start_run(spec, "generate").id
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    s = generate(spec, ws, run_id, progress_bar=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall_s": wall, "teach_s": s.elapsed_s, "sent": s.sent,
                      "rows": s.rows_written, "complete": s.complete,
                      "cpu_s": (after.ru_utime + after.ru_stime)
                      - (before.ru_utime + before.ru_stime),
                      "peak_rss_mb": after.ru_maxrss / 1024}))


def bare_messages(row: dict) -> list[dict]:
    """The bare loop's request for a corpus row; the peers get the same ones."""
    return [{"role": "user", "content": row["passage"] + " " + row["question"]}]


def bare(url: str, n: int, concurrency: int) -> None:
    """The machine's ceiling: a bare aiohttp loop, same requests, no cache/rows/shards."""
    import asyncio

    import aiohttp

    from flows.ingest import demo

    rows = list(demo.generate(n, seed=7, people=2, colors=2, max_count=9, tasks=["sum"]))

    async def main():
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency + 8)) as s:
            async def one(row):
                async with sem:
                    body = {"model": "fake", "max_tokens": 64, "messages": bare_messages(row)}
                    async with s.post(f"{url}/chat/completions", json=body) as r:
                        return (await r.json())["choices"][0]["message"]["content"]
            await asyncio.gather(*(one(r) for r in rows))

    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"teach_s": wall, "cpu_s": (after.ru_utime + after.ru_stime)
                      - (before.ru_utime + before.ru_stime),
                      "peak_rss_mb": after.ru_maxrss / 1024}))


def bench_bare(url: str, args) -> dict:
    reps = []
    for _ in range(args.repeats):
        out = subprocess.run([sys.executable, __file__, "--bare", url, "--requests",
                              str(args.requests), "--concurrency", str(args.concurrency)],
                             capture_output=True, text=True, check=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
        reps.append(json.loads(out.stdout.strip().splitlines()[-1]))
    wall = statistics.median(r["teach_s"] for r in reps)
    return {"tool": "bare aiohttp loop (ceiling: no cache, rows or shards)",
            "completions_per_s": args.requests / wall, "wall_s": wall,
            "cpu_s": statistics.median(r["cpu_s"] for r in reps),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in reps),
            "reps": [round(r["teach_s"], 3) for r in reps]}


def run_child(curriculum: Path, home: Path) -> dict:
    env = {**os.environ, "STAIRS_HOME": str(home), "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, __file__, "--child", str(curriculum)], env=env,
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def edit_one_row(corpus: Path) -> None:
    lines = corpus.read_text().splitlines()
    row = json.loads(lines[0])
    row["passage"] = row["passage"] + " It was a sunny day."
    lines[0] = json.dumps(row)
    corpus.write_text("\n".join(lines) + "\n")


def bench_stairs(url: str, args, tmp: Path) -> dict:
    reps = []
    for i in range(args.repeats):
        folder = tmp / f"stairs-{i}"
        folder.mkdir()
        cur = write_workload(folder, url, args.requests, args.concurrency)
        r = run_child(cur, folder / "home")
        assert r["complete"] and r["sent"] == args.requests, r
        reps.append(r)
    # Rerun and one-row edit, in the last repetition's home (its cache).
    n0 = received(url)
    rerun = run_child(cur, folder / "home")
    resent_rerun = received(url) - n0
    edit_one_row(folder / "corpus.jsonl")
    n1 = received(url)
    edited = run_child(cur, folder / "home")
    resent_edit = received(url) - n1
    teach = statistics.median(r["teach_s"] for r in reps)
    return {"tool": "stairs", "completions_per_s": args.requests / teach,
            "teach_s": teach, "wall_s": statistics.median(r["wall_s"] for r in reps), "cpu_s": statistics.median(r["cpu_s"] for r in reps),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in reps),
            "resent_rerun": resent_rerun, "resent_edit": resent_edit,
            "rerun_wall_s": rerun["wall_s"], "edit_wall_s": edited["wall_s"],
            "reps": [round(r["teach_s"], 3) for r in reps]}


def bench_peer(name: str, runner: str, url: str, args, tmp: Path) -> dict | None:
    """A peer on the same server and rows: a run, an unchanged rerun, a one-row edit, each
    counted by what the server received."""
    venv_python = PEER_ROOT / name / "bin" / "python"
    script = ROOT / "bench" / "peers" / runner
    if not venv_python.exists() or not script.exists():
        return None
    from gen_helpers import demo_jsonl

    folder = tmp / name
    folder.mkdir()
    corpus = demo_jsonl(folder / "corpus.jsonl", args.requests, seed=7)
    prompts = folder / "prompts.jsonl"

    def write_prompts() -> None:
        # From the same corpus file stairs reads, so a one-row corpus edit changes one request.
        with open(corpus, encoding="utf-8") as f, open(prompts, "w", encoding="utf-8") as out:
            for line in f:
                out.write(json.dumps({"messages": bare_messages(json.loads(line))}) + "\n")

    def once(workdir: Path) -> tuple[dict, int]:
        before = received(url)
        out = subprocess.run([str(venv_python), str(script), "--base-url", url, "--prompts",
                              str(prompts), "--n", str(args.requests), "--concurrency",
                              str(args.concurrency), "--workdir", str(workdir)],
                             capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip()[-400:])
        return json.loads(out.stdout.strip().splitlines()[-1]), received(url) - before

    try:
        # Each repetition in a fresh work folder (no cache); then, in the last one's folder,
        # an unchanged rerun and a one-row edit, as for stairs.
        write_prompts()
        reps = [once(folder / f"work-{i}") for i in range(args.repeats)]
        _, resent_rerun = once(folder / f"work-{args.repeats - 1}")
        edit_one_row(corpus)
        write_prompts()
        _, resent_edit = once(folder / f"work-{args.repeats - 1}")
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        return {"tool": name, "error": str(e)[-300:]}
    docs = [r for r, _ in reps]
    wall = statistics.median(r["wall_s"] for r in docs)
    return {"tool": f"{name} {docs[0].get('version', '')}".strip(),
            "completions_per_s": min(r["completed"] for r in docs) / wall,
            "wall_s": wall, "completed": min(r["completed"] for r in docs),
            "failed": max(r["failed"] for r in docs),
            "cpu_s": statistics.median(r["client_cpu_s"] for r in docs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in docs),
            "sent": [s for _, s in reps],
            "resent_rerun": resent_rerun, "resent_edit": resent_edit,
            "reps": [round(r["wall_s"], 3) for r, _ in reps]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--bare")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    if args.bare:
        bare(args.bare, args.requests, args.concurrency)
        return
    ideal = args.concurrency / args.latency
    server, url = start_server(args.latency)
    try:
        with tempfile.TemporaryDirectory(prefix="stairs-bench-") as d:
            tmp = Path(d)
            results = [bench_stairs(url, args, tmp), bench_bare(url, args)]
            missing = []
            for name, runner in PEERS.items():
                r = bench_peer(name, runner, url, args, tmp)
                if r is None:
                    missing.append(name)
                else:
                    results.append(r)
    finally:
        server.terminate()
        server.wait()
    print(f"workload: {args.requests} requests, concurrency {args.concurrency}, latency "
          f"{args.latency * 1000:.0f} ms -> ideal {ideal:.0f} completions/s; "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end")
    print("| tool | completions/s | % of ideal | end-to-end s | client CPU s | peak RSS MB "
          "| re-sent on rerun | re-sent on 1-row edit |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['tool']} | failed: {r['error']} | | | | | | |")
            continue
        print(f"| {r['tool']} | {r['completions_per_s']:.1f} | "
              f"{100 * r['completions_per_s'] / ideal:.1f}% | {r['wall_s']:.2f} | "
              f"{r['cpu_s']:.2f} | "
              f"{r['peak_rss_mb']:.0f} | {r.get('resent_rerun', 'n/a')} | "
              f"{r.get('resent_edit', 'n/a')} |")
    if missing:
        print(f"not run (no venv under {PEER_ROOT} or no bench/peers runner): "
              f"{', '.join(missing)}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
