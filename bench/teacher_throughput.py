"""Teacher client throughput: how close stairs' generate stage gets to the ideal rate of an
endpoint with fixed latency and to a bare aiohttp loop, what it costs in client CPU and memory,
and what it re-sends.

    PYTHONPATH=. python bench/teacher_throughput.py                   # both regimes, medians of 3
    PYTHONPATH=. python bench/teacher_throughput.py --regime cpu      # 20 ms, c=128, 4,000
    PYTHONPATH=. python bench/teacher_throughput.py --requests 300    # quick

Two regimes: "latency" (200 ms, concurrency 64, 2,000 requests) is bound by the endpoint, so
everyone lands near the ideal rate; "cpu" (20 ms, concurrency 128, 4,000 requests, like a small
model on a GPU) is bound by the client's CPU per request. Ideal completions/s = concurrency /
latency.

The endpoint (bench/lean_server.py: OpenAI chat completions for as little CPU per request as
Python allows) runs in its own process on 127.0.0.1, so the client's CPU seconds are the
client's alone (with stairs's row process, flows/generate/rowproc.py, counted in them). Each repetition runs the whole
generate stage (cache lookups, cache writes, row parsing, shard writes) in a fresh subprocess
with a fresh STAIRS_HOME, then the bare loops, so competitors share the machine's load of the
moment; we report medians. Then, in the last home: a rerun (must send 0) and a one-row corpus
edit (must send 1).

Two ceilings, each a minimal aiohttp client (no cache, rows or shards) in its own subprocess:
"stairs's requests" posts exactly the bodies stairs sends (the template's few-shot prompt,
~1.3 KB of messages, and the same sampling fields); "one-line prompts" posts one short user
message per row, the workload peer tools get. Peers (distilabel, curator, data-designer) run
through bench/peers/<tool>_runner.py with /work/bench-venvs/<tool>/bin/python when that venv
exists.
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
# name -> (latency s, concurrency, requests)
REGIMES = {"latency": (0.2, 64, 2000), "cpu": (0.02, 128, 4000)}
SAME, ONE_LINE = "bare aiohttp loop, stairs's requests", "bare aiohttp loop, one-line prompts"


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    from tests.helpers.openai_server import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench/lean_server.py"),
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

    from tests.helpers.gen_helpers import demo_jsonl

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
    # Inside the run's lock and scope, as a `stairs generate` is: without them another stairs
    # command on this catalog would take the run for a killed one.
    with ws.run_scope(None, lambda: ws.start_run(spec, "generate").id) as run:
        before = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        s = generate(spec, ws, run.id, progress_bar=False)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall_s": wall, "teach_s": s.elapsed_s, "loop_cpu_s": s.cpu_s,
                      "sent": s.sent, "rows": s.rows_written, "complete": s.complete,
                      # with the row process's (flows/generate/rowproc.py), waited for
                      "cpu_s": (after.ru_utime + after.ru_stime + children.ru_utime
                                + children.ru_stime) - (before.ru_utime + before.ru_stime),
                      "peak_rss_mb": after.ru_maxrss / 1024}))


def bare_messages(row: dict) -> list[dict]:
    """The one-line request for a corpus row; the peers get the same ones."""
    return [{"role": "user", "content": row["passage"] + " " + row["question"]}]


BODIES = {SAME: "bodies-stairs.jsonl", ONE_LINE: "bodies-one-line.jsonl"}


def write_bodies(curriculum: Path) -> None:
    """The bare loops' request bodies, one JSON per line, beside the curriculum: stairs's own
    (its template and teacher turn each corpus row into the body it posts) and the one-line
    ones. Run in a subprocess (bodies_for): imported here, stairs would grow this process, and
    every child spawned from it would report this process's peak RSS as its own."""
    from flows.generate.flow import sampling_for
    from flows.preflight import load_checked
    from flows.prompting.check import generate_template
    from flows.teachers import Request, make_teacher

    spec = load_checked(str(curriculum))
    template, teacher = generate_template(spec), make_teacher(spec.teacher)
    sampling = sampling_for(spec.teacher, template).for_sample(0)
    folder = curriculum.parent
    rows = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    paths = {name: folder / file for name, file in BODIES.items()}
    with open(paths[SAME], "w", encoding="utf-8") as f:
        for row in rows:
            messages = template.render(row, few_shot=spec.teacher.few_shot)
            f.write(json.dumps(teacher._params(Request("", messages, sampling, 0))) + "\n")
    with open(paths[ONE_LINE], "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps({"model": "fake", "max_tokens": 64,
                                "messages": bare_messages(row)}) + "\n")


def bodies_for(curriculum: Path) -> dict[str, Path]:
    subprocess.run([sys.executable, __file__, "--write-bodies", str(curriculum)], check=True,
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return {name: curriculum.parent / file for name, file in BODIES.items()}


def bare(url: str, bodies: str, concurrency: int) -> None:
    """The machine's ceiling: a bare aiohttp loop posting the given bodies, nothing else."""
    import asyncio

    import aiohttp

    with open(bodies, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]

    async def main():
        sem = asyncio.Semaphore(concurrency)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=concurrency + 8)) as s:
            async def one(body):
                async with sem:
                    async with s.post(f"{url}/chat/completions", json=body) as r:
                        return (await r.json())["choices"][0]["message"]["content"]
            await asyncio.gather(*(one(b) for b in docs))

    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"teach_s": wall, "cpu_s": (after.ru_utime + after.ru_stime)
                      - (before.ru_utime + before.ru_stime),
                      "peak_rss_mb": after.ru_maxrss / 1024}))


def run_bare(url: str, bodies: Path, concurrency: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--bare", url, "--bodies", str(bodies),
                          "--concurrency", str(concurrency)],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


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


def med(reps: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in reps)


def server_cpu(server: subprocess.Popen) -> float:
    import psutil

    t = psutil.Process(server.pid).cpu_times()
    return t.user + t.system


def bench_stairs_and_bare(server: subprocess.Popen, url: str, n: int, concurrency: int,
                          repeats: int, tmp: Path) -> list[dict]:
    """Repetition i runs stairs, then both bare loops, so all three see similar load."""
    runs: dict[str, list[dict]] = {"stairs": [], SAME: [], ONE_LINE: []}
    for i in range(repeats):
        folder = tmp / f"stairs-{i}"
        folder.mkdir()
        cur = write_workload(folder, url, n, concurrency)
        bodies = bodies_for(cur)
        before = server_cpu(server)
        r = run_child(cur, folder / "home")
        assert r["complete"] and r["sent"] == n, r
        runs["stairs"].append({**r, "server_cpu_s": server_cpu(server) - before})
        for name in (SAME, ONE_LINE):
            before = server_cpu(server)
            r = run_bare(url, bodies[name], concurrency)
            runs[name].append({**r, "server_cpu_s": server_cpu(server) - before})
    # Rerun and one-row edit, in the last repetition's home (its cache).
    n0 = received(url)
    rerun = run_child(cur, folder / "home")
    resent_rerun = received(url) - n0
    edit_one_row(folder / "corpus.jsonl")
    n1 = received(url)
    edited = run_child(cur, folder / "home")
    resent_edit = received(url) - n1
    reps = runs["stairs"]
    results = [{"tool": "stairs", "completions_per_s": n / med(reps, "teach_s"),
                "teach_s": med(reps, "teach_s"), "wall_s": med(reps, "wall_s"),
                "loop_cpu_ms": 1000 * med(reps, "loop_cpu_s") / n, "cpu_s": med(reps, "cpu_s"),
                "server_cpu_ms": 1000 * med(reps, "server_cpu_s") / n,
                "peak_rss_mb": med(reps, "peak_rss_mb"),
                "resent_rerun": resent_rerun, "resent_edit": resent_edit,
                "rerun_wall_s": rerun["wall_s"], "edit_wall_s": edited["wall_s"],
                "reps": [round(r["teach_s"], 3) for r in reps],
                "loop_cpu_reps": [r["loop_cpu_s"] for r in reps],
                # stairs against the bare loop that ran right after it: the load of the moment
                # moves both (on a noisy VM the bare loop's own rate varied by 20%)
                "paired_vs_same": [round(b["teach_s"] / r["teach_s"], 3)
                                   for r, b in zip(reps, runs[SAME])]}]
    for name in (SAME, ONE_LINE):
        reps = runs[name]
        results.append({"tool": name, "completions_per_s": n / med(reps, "teach_s"),
                        "wall_s": med(reps, "teach_s"), "loop_cpu_ms": 1000 * med(reps, "cpu_s") / n,
                        "server_cpu_ms": 1000 * med(reps, "server_cpu_s") / n,
                        "cpu_s": med(reps, "cpu_s"), "peak_rss_mb": med(reps, "peak_rss_mb"),
                        "reps": [round(r["teach_s"], 3) for r in reps]})
    return results


def bench_peer(name: str, runner: str, url: str, n: int, concurrency: int, repeats: int,
               tmp: Path) -> dict | None:
    """A peer on the same server and rows: a run, an unchanged rerun, a one-row edit, each
    counted by what the server received."""
    venv_python = PEER_ROOT / name / "bin" / "python"
    script = ROOT / "bench" / "peers" / runner
    if not venv_python.exists() or not script.exists():
        return None
    from tests.helpers.gen_helpers import demo_jsonl

    folder = tmp / name
    folder.mkdir()
    corpus = demo_jsonl(folder / "corpus.jsonl", n, seed=7)
    prompts = folder / "prompts.jsonl"

    def write_prompts() -> None:
        # From the same corpus file stairs reads, so a one-row corpus edit changes one request.
        with open(corpus, encoding="utf-8") as f, open(prompts, "w", encoding="utf-8") as out:
            for line in f:
                out.write(json.dumps({"messages": bare_messages(json.loads(line))}) + "\n")

    def once(workdir: Path) -> tuple[dict, int]:
        before = received(url)
        out = subprocess.run([str(venv_python), str(script), "--base-url", url, "--prompts",
                              str(prompts), "--n", str(n), "--concurrency",
                              str(concurrency), "--workdir", str(workdir)],
                             capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip()[-400:])
        return json.loads(out.stdout.strip().splitlines()[-1]), received(url) - before

    try:
        # Each repetition in a fresh work folder (no cache); then, in the last one's folder,
        # an unchanged rerun and a one-row edit, as for stairs.
        write_prompts()
        reps = [once(folder / f"work-{i}") for i in range(repeats)]
        _, resent_rerun = once(folder / f"work-{repeats - 1}")
        edit_one_row(corpus)
        write_prompts()
        _, resent_edit = once(folder / f"work-{repeats - 1}")
    except (RuntimeError, subprocess.TimeoutExpired, ValueError) as e:
        return {"tool": name, "error": str(e)[-300:]}
    docs = [r for r, _ in reps]
    wall = med(docs, "wall_s")
    return {"tool": f"{name} {docs[0].get('version', '')}".strip(),
            "completions_per_s": min(r["completed"] for r in docs) / wall,
            "wall_s": wall, "completed": min(r["completed"] for r in docs),
            "failed": max(r["failed"] for r in docs),
            "loop_cpu_ms": 1000 * med(docs, "client_cpu_s") / n,
            "cpu_s": med(docs, "client_cpu_s"), "peak_rss_mb": med(docs, "peak_rss_mb"),
            "sent": [s for _, s in reps],
            "resent_rerun": resent_rerun, "resent_edit": resent_edit,
            "reps": [round(r["wall_s"], 3) for r, _ in reps]}


def run_regime(name: str, latency: float, concurrency: int, n: int, repeats: int) -> dict:
    load_start = os.getloadavg()[0]
    server, url = start_server(latency)
    try:
        with tempfile.TemporaryDirectory(prefix="stairs-bench-") as d:
            tmp = Path(d)
            results = bench_stairs_and_bare(server, url, n, concurrency, repeats, tmp)
            missing = []
            for peer, runner in PEERS.items():
                r = bench_peer(peer, runner, url, n, concurrency, repeats, tmp)
                if r is None:
                    missing.append(peer)
                else:
                    results.append(r)
    finally:
        server.terminate()
        server.wait()
    return {"regime": name, "latency": latency, "concurrency": concurrency, "requests": n,
            "load_start": load_start, "load_end": os.getloadavg()[0], "results": results,
            "missing": missing}


def print_regime(doc: dict) -> None:
    ideal = doc["concurrency"] / doc["latency"]
    results = doc["results"]
    ceiling = {r["tool"]: r["completions_per_s"] for r in results}
    print(f"\n{doc['regime']}: {doc['requests']} requests, concurrency {doc['concurrency']}, "
          f"latency {doc['latency'] * 1000:.0f} ms -> ideal {ideal:.0f} completions/s; "
          f"{os.cpu_count()} CPU cores, load average {doc['load_start']:.1f} at the start, "
          f"{doc['load_end']:.1f} at the end")
    print("| tool | completions/s | % of ideal | vs bare loop, same requests | vs bare loop, "
          "one-line | client CPU ms/request | server CPU ms/request | client CPU s "
          "| peak RSS MB | re-sent on rerun | re-sent on 1-row edit |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "error" in r:
            print(f"| {r['tool']} | failed: {r['error']} | | | | | | | | | |")
            continue
        c = r["completions_per_s"]
        server = f"{r['server_cpu_ms']:.3f}" if "server_cpu_ms" in r else "n/a"
        print(f"| {r['tool']} | {c:.0f} | {100 * c / ideal:.1f}% | "
              f"{100 * c / ceiling[SAME]:.1f}% | {100 * c / ceiling[ONE_LINE]:.1f}% | "
              f"{r['loop_cpu_ms']:.3f} | {server} | {r['cpu_s']:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{r.get('resent_rerun', 'n/a')} | {r.get('resent_edit', 'n/a')} |")
    paired = next(r["paired_vs_same"] for r in results if r["tool"] == "stairs")
    print(f"stairs / bare loop (stairs's requests) per repetition: {paired}, median "
          f"{100 * statistics.median(paired):.1f}%")
    if doc["missing"]:
        print(f"not run (no venv under {PEER_ROOT} or no bench/peers runner): "
              f"{', '.join(doc['missing'])}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child")
    ap.add_argument("--bare")
    ap.add_argument("--bodies")
    ap.add_argument("--write-bodies")
    ap.add_argument("--regime", choices=[*REGIMES, "both"], default="both")
    ap.add_argument("--requests", type=int, help="override the regime's request count")
    ap.add_argument("--concurrency", type=int, help="override the regime's concurrency")
    ap.add_argument("--latency", type=float, help="override the regime's latency (seconds)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    if args.bare:
        bare(args.bare, args.bodies, args.concurrency)
        return
    if args.write_bodies:
        write_bodies(Path(args.write_bodies))
        return
    docs = []
    for name in (REGIMES if args.regime == "both" else [args.regime]):
        latency, concurrency, n = REGIMES[name]
        docs.append(run_regime(name, args.latency or latency, args.concurrency or concurrency,
                               args.requests or n, args.repeats))
        print_regime(docs[-1])
    print(json.dumps(docs))


if __name__ == "__main__":
    main()
