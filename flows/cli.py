"""The `stairs` command line. Every verb that runs work runs it as a Prefect flow (a temporary
local server unless PREFECT_API_URL points at one); `--json` prints exactly one JSON document on
stdout and nothing else."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from flows.settings import configure_prefect

app = typer.Typer(help="stairs: turn big language models into small ones.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
out = Console()
err = Console(stderr=True)

CurriculumArg = typer.Argument(..., help="Curriculum YAML file (see curricula/).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout.")


def _load(path: Path):
    from flows.spec import SpecError, load

    try:
        return load(path)
    except SpecError as e:
        err.print(f"[red]invalid curriculum[/red] {e}")
        raise typer.Exit(2) from None


def _emit_json(doc) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _workspace():
    from flows.workspace import Workspace

    return Workspace.open()


@app.command()
def validate(curriculum: Path = CurriculumArg) -> None:
    """Check a curriculum: keys, types, files and templates it names. Exit 0 when valid."""
    spec = _load(curriculum)
    out.print(f"[green]ok[/green] {curriculum}: curriculum '{spec.name}', "
              f"{spec.staircase.rounds} round(s), teacher {spec.teacher.backend}:{spec.teacher.model}")


@app.command()
def ingest(curriculum: Path = CurriculumArg, as_json: bool = JsonOpt) -> None:
    """Read the curriculum's corpus, hold out the eval split, write corpus/eval/rejects shards."""
    _load(curriculum)
    configure_prefect()
    from flows.ingest import ingest_flow

    result = ingest_flow(curriculum=str(curriculum))
    if as_json:
        _emit_json(result)
        return
    out.print(f"run [bold]{result['run_id']}[/bold]: {result['train_rows']} train rows, "
              f"{result['eval_rows']} eval rows, {result['rejected']} rejected")
    for reason, n in result["rejects_by_reason"].items():
        out.print(f"  rejected {n:>6}  {reason}")


@app.command()
def run(curriculum: Path = CurriculumArg, new: bool = typer.Option(
        False, "--new", help="Start a fresh run instead of resuming an unfinished one."),
        as_json: bool = JsonOpt) -> None:
    """Run the whole staircase the curriculum describes (resumes an unfinished run)."""
    _load(curriculum)
    configure_prefect()
    from flows.runinfo import run_details
    from flows.staircase import staircase_flow

    result = staircase_flow(curriculum=str(curriculum), new=new)
    details = run_details(_workspace(), result["run_id"])
    if as_json:
        _emit_json({**result, **details})
        return
    _print_details(details)


@app.command()
def runs(as_json: bool = JsonOpt, limit: int = typer.Option(50, help="How many, newest first.")) -> None:
    """List runs, newest first."""
    from flows.runinfo import run_row

    rows = [run_row(r) for r in _workspace().catalog.runs(limit)]
    if as_json:
        _emit_json(rows)
        return
    table = Table("run", "curriculum", "command", "status", "started")
    for r in rows:
        table.add_row(r["id"], r["curriculum"], r["command"], r["status"], r["created_at"][:19])
    out.print(table)


@app.command()
def show(run_id: str = typer.Argument(..., help="A run id from `stairs runs`."),
         as_json: bool = JsonOpt) -> None:
    """Stages, shard counts, rejects by reason, models and metrics of one run."""
    from flows.runinfo import run_details

    try:
        details = run_details(_workspace(), run_id)
    except KeyError:
        err.print(f"[red]no run[/red] {run_id!r} (see `stairs runs`)")
        raise typer.Exit(1) from None
    if as_json:
        _emit_json(details)
        return
    _print_details(details)


@app.command()
def quantize(curriculum: Path = CurriculumArg,
             run_id: Optional[str] = typer.Option(None, "--run", help="Add to this run "
                                                  "(its round-0 student); default: a new run."),
             as_json: bool = JsonOpt) -> None:
    """Quantize the run's student (the base model until one is trained): GGUF + llama.cpp
    k-quants, int8 absmax, int4; measure each on the held-out rows."""
    _load(curriculum)
    configure_prefect()
    from flows.quantize import quantize_flow

    result = quantize_flow(curriculum=str(curriculum), run_id=run_id)
    if as_json:
        _emit_json(result)
        return
    stand_in = " (base model standing in for a student)" if result.get(
        "student_is_base_stand_in") else ""
    out.print(f"run [bold]{result['run_id']}[/bold]: quantized {result.get('student')}{stand_in}")
    table = Table("artifact", "model id", "MB", "bits/w", "accuracy", "ppl", "tok/s", "engine")
    for r in result.get("table", []):
        table.add_row(r["artifact"], str(r["model_id"]), f"{r['size_mb']:.1f}",
                      f"{r['bits_per_weight']:.2f}", f"{r['accuracy']:.3f}",
                      f"{r['perplexity']:.3f}", f"{r['tokens_per_s']:.1f}", r["engine"])
    out.print(table)


@app.command()
def serve(model: str = typer.Argument(..., help="catalog:<id>, smollm2-135m, or a GGUF path."),
          port: int = typer.Option(0, help="Port on 127.0.0.1; 0 picks a free one."),
          n_ctx: int = typer.Option(2048, help="Context length."),
          threads: Optional[int] = typer.Option(None, help="CPU threads (default: llama.cpp's).")
          ) -> None:
    """Serve a GGUF model with llama.cpp's OpenAI-compatible server on loopback until Ctrl-C."""
    import signal

    from flows.models import ModelRefError
    from flows.serve import ServeError, start_server

    try:
        server = start_server(model, port=port or None, n_ctx=n_ctx, threads=threads)
    except (ModelRefError, ServeError) as e:
        err.print(f"[red]cannot serve[/red] {e}")
        raise typer.Exit(1) from None

    def _stop(signum, frame):  # SIGTERM as well as Ctrl-C stops the child server cleanly
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    out.print(f"serving {server.model_path.name} at {server.base_url} (model "
              f"'{server.model_path.stem}'); Ctrl-C stops", highlight=False)
    sys.stdout.flush()
    try:
        code = server.process.wait()
        err.print(f"[red]llama.cpp server exited[/red] with {code}; log: {server.log_path}")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    out.print("stopped")


@app.command("demo-data")
def demo_data(out_file: Path = typer.Argument(..., help="JSONL file to write."),
              rows: int = 100, seed: int = 0, people: int = 2, colors: int = 2,
              max_count: int = 9, tasks: str = typer.Option("sum", help="Comma-separated.")) -> None:
    """Write the demo corpus (open-book problems about fictional people) as JSONL."""
    from flows.corpus import demo

    with open(out_file, "w", encoding="utf-8") as f:
        for row in demo.generate(rows, seed=seed, people=people, colors=colors,
                                 max_count=max_count, tasks=tasks.split(",")):
            f.write(json.dumps(row) + "\n")
    out.print(f"wrote {rows} rows to {out_file}")


def _print_details(d: dict) -> None:
    run = d["run"]
    out.print(f"[bold]{run['id']}[/bold]  {run['curriculum']}  {run['status']}"
              + (f"  [red]{run['error']}[/red]" if run["error"] else ""))
    table = Table("stage", "round", "status", "shards", "rows")
    for st in d["stages"]:
        table.add_row(st["name"] + (" (reused)" if st["reused_from"] else ""),
                      "" if st["round"] is None else str(st["round"]), st["status"],
                      ", ".join(sorted({s["kind"] for s in st["shards"]})),
                      str(sum(s["rows"] for s in st["shards"])))
    out.print(table)
    if d["rejects_by_reason"]:
        out.print("rejects / drops by reason: " + ", ".join(
            f"{k}={v}" for k, v in d["rejects_by_reason"].items()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
