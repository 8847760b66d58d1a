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
def train(curriculum: Path = CurriculumArg,
          run_id: Optional[str] = typer.Option(None, "--run", help="Run whose curated rows to "
                                               "train on (default: the latest one)."),
          round_index: int = typer.Option(0, "--round", help="Staircase round."),
          as_json: bool = JsonOpt) -> None:
    """Fine-tune the student on a run's curated rows; score it and its base on held-out rows."""
    _load(curriculum)
    configure_prefect()
    from flows.train import TrainError, train_flow

    try:
        result = train_flow(curriculum=str(curriculum), run_id=run_id, round_index=round_index)
    except TrainError as e:
        err.print(f"[red]cannot train[/red] {e}")
        raise typer.Exit(1) from None
    if as_json:
        _emit_json(result)
        return
    out.print(f"run [bold]{result['run_id']}[/bold]: student model {result['student_model_id']} "
              f"({result['objective']}, {result['steps']} steps, loss {result['first_loss']:.3f}"
              f" -> {result['final_loss']:.3f})")
    for key in ("base_accuracy", "student_accuracy"):
        if key in result:
            out.print(f"  {key.replace('_', ' ')}: {result[key]:.1%} of {result['eval_rows']}")


@app.command("eval")
def eval_(model: str = typer.Argument(..., help="A model folder, a .gguf file, 'smollm2-135m' "
                                      "or 'catalog:<id>'."),
          curriculum: Path = typer.Option(..., "--curriculum", help="Curriculum YAML whose "
                                          "held-out rows and template to use."),
          rows: Optional[int] = typer.Option(None, help="Score only this many eval rows."),
          as_json: bool = JsonOpt) -> None:
    """Score any model on a curriculum's held-out rows (exact-match accuracy, loss, tokens/s)."""
    _load(curriculum)
    configure_prefect()
    from flows.student.base import ModelRefError
    from flows.train import TrainError, eval_flow

    try:
        result = eval_flow(model=model, curriculum=str(curriculum), rows=rows)
    except (TrainError, ModelRefError) as e:
        err.print(f"[red]cannot evaluate[/red] {e}")
        raise typer.Exit(1) from None
    if as_json:
        _emit_json({k: v for k, v in result.items()})
        return
    out.print(f"{model} ({result['format']}): accuracy {result['accuracy']:.1%} "
              f"({result['correct']}/{result['n']}), {result['tokens_per_s']:.1f} tokens/s"
              + (f", eval loss {result['eval_loss']:.3f}" if result["eval_loss"] else "")
              + f"  [model {result['model_id']}, run {result['run_id']}]")


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


prompts_app = typer.Typer(help="Prompt templates (prompts/*.yaml): list them, render them.",
                          no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")


@prompts_app.command("list")
def prompts_list(prompts_dir: Optional[Path] = typer.Option(
        None, "--prompts-dir", help="Template folder (default: the project's prompts/)."),
        as_json: bool = JsonOpt) -> None:
    """List the templates: what each is for, the fields it needs, its output parser."""
    from flows.prompting.preview import describe_templates

    rows = describe_templates(prompts_dir)
    if as_json:
        _emit_json(rows)
        return
    table = Table("template", "output", "needs", "description")
    for r in rows:
        if r["error"]:
            table.add_row(r["name"], "[red]broken[/red]", "", r["error"])
        else:
            table.add_row(r["name"], r["output"] + (" (json)" if r["structured"] else ""),
                          ", ".join(r["needs"]), r["description"])
    out.print(table)
    if any(r["error"] for r in rows):
        raise typer.Exit(1)


@prompts_app.command("render")
def prompts_render(template: str = typer.Argument(..., help="Template name, e.g. rationale."),
                   curriculum: Path = typer.Option(..., "--curriculum", "-c",
                                                   help="Curriculum whose corpus rows to use."),
                   n: int = typer.Option(3, "--n", min=1, help="How many corpus rows."),
                   as_json: bool = JsonOpt) -> None:
    """Render a template for the first N real corpus rows and print the messages (no teacher)."""
    from flows.prompting import TemplateError
    from flows.prompting.preview import render_rows

    spec = _load(curriculum)
    try:
        doc = render_rows(spec, template, n)
    except TemplateError as e:
        err.print(f"[red]template error[/red] {e}")
        raise typer.Exit(2) from None
    if as_json:
        _emit_json(doc)
        return
    out.print(f"[bold]{doc['template']}[/bold]  {doc['path']}  sha256:{doc['content_hash'][:12]}"
              f"  output={doc['output']}")
    for r in doc["rows"]:
        out.rule(f"row {r['row_id']} (line {r['line']})")
        for m in r["messages"]:
            out.print(f"[cyan]{m['role']}[/cyan]", highlight=False)
            out.print(m["content"], markup=False, highlight=False, soft_wrap=True)


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
