"""The `stairs` command line. Every verb that runs work runs it as a Prefect flow (on a temporary
local server that lives and dies with the command, flows/prefect_server.py, unless
PREFECT_API_URL points at one), except the quick looks before a run that record no run
(`preview`, `prompts compare`): they run in this process, so a template edit is checked in
seconds. `--json` prints exactly one JSON document on stdout and nothing else. Expected errors
are one red line and an exit code (_run_flow)."""

from __future__ import annotations

import json
import logging
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.settings import configure_prefect

# Before anything imports prefect: Prefect freezes its settings (home, server timeouts) when it
# is first imported, and loading a curriculum runs stage checks whose modules may import it.
configure_prefect()

app = typer.Typer(help="stairs: turn big language models into small ones.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
# Piped into a log file, rich would wrap tables at 80 columns and cut every cell; a log has room.
out = Console(width=None if Console().is_terminal else 200)
# Errors are one line each, however long: soft_wrap keeps rich from breaking them.
err = Console(stderr=True, soft_wrap=True)

CurriculumArg = typer.Argument(..., help="Curriculum YAML file (see curricula/).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout.")


def _load(path: Path, *, flow: bool = False):
    """The curriculum, parsed and through every pre-flight check, or one red line and exit 2.
    `flow`: a stage flow runs next, so its temporary Prefect server is launched first and comes
    up while the checks and the stage's imports run (flows/prefect_server.py)."""
    from flows.preflight import load_checked
    from flows.spec import SpecError

    if flow:
        from flows import prefect_server

        prefect_server.launch()

    try:
        return load_checked(path)
    except SpecError as e:
        _fail("invalid curriculum", str(e), 2)


def _emit_json(doc) -> None:
    if hasattr(doc, "to_json"):  # a typed stage result
        doc = doc.to_json()
    sys.stdout.write(json.dumps(doc, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _expected_errors(stage_errors: dict) -> dict[type[BaseException], tuple[str, int]]:
    """Errors a command can meet in normal use, each printed as one red line (label, then the
    error's own message, which names the file, key, row, run or URL) with its exit code:
    2 bad input, 3 teacher unreachable, 4 run in use by another process, 1 anything else
    expected. `stage_errors` adds the running stage's own ({CurateError: ("cannot curate", 1)})."""
    from sqlalchemy.exc import OperationalError

    from flows.models import ModelRefError
    from flows.prefect_server import PrefectServerError
    from flows.prompting import TemplateError
    from flows.registry_files import RegistryFetchError
    from flows.spec import SpecError
    from flows.teachers import TeacherUnreachable
    from flows.workspace import UnknownRun
    from storage.locks import RunLocked

    return {SpecError: ("invalid curriculum", 2), TemplateError: ("template error", 2),
            UnknownRun: ("unknown run", 2), ModelRefError: ("bad model reference", 2),
            TeacherUnreachable: ("teacher unreachable", 3), RunLocked: ("run in use", 4),
            **stage_errors, OperationalError: ("catalog error", 1),
            PrefectServerError: ("cannot start Prefect", 1),
            RegistryFetchError: ("cannot fetch from the package registry", 1),
            OSError: ("cannot read or write", 1), MemoryError: ("out of memory", 1)}


def _one_line(e: BaseException) -> str:
    from sqlalchemy.exc import OperationalError

    text = str(e)
    if isinstance(e, OperationalError):  # the driver's words, not the SQL statement
        from flows.settings import catalog_url
        from flows.urls import redact

        text = f"{e.orig} ({redact(catalog_url())})"
    return " ".join(text.split()) or type(e).__name__


_STOPPED_BY = {"signal": signal.SIGINT}


def _terminate(signum, frame) -> None:
    # SIGTERM (a service manager, `kill`) stops like Ctrl-C: answered work is written first.
    _STOPPED_BY["signal"] = signum
    raise KeyboardInterrupt


def _run_flow(flow, params_type, *, stage_errors: dict | None = None, **fields):
    """Run a stage flow on a Prefect server that lives and dies with this command
    (flows/prefect_server.py). An expected error becomes one red line and its exit code, not
    a traceback; Ctrl-C or SIGTERM stop within seconds, keep every answered row and exit
    130 / 143."""
    from pydantic import ValidationError

    from flows import prefect_server
    from flows.spec import format_errors

    try:
        params = params_type(**fields)
    except ValidationError as e:  # an option out of range (--round 25, a malformed --run)
        _fail("invalid option", "; ".join(format_errors(e)), 2)
    expected = _expected_errors(stage_errors or {})
    signal.signal(signal.SIGTERM, _terminate)
    _quiet_prefect_tracebacks(tuple(expected))
    try:
        prefect_server.start()
        return flow(params)
    except KeyboardInterrupt:
        signum = _STOPPED_BY["signal"]
        err.print(f"[yellow]stopped[/yellow] ({signal.Signals(signum).name}): every answered "
                  "row is kept; run the same command to resume")
        raise typer.Exit(128 + signum) from None
    except tuple(expected) as e:
        label, code = next(v for k, v in expected.items() if isinstance(e, k))
        _fail(label, _one_line(e), code)


def _fail(label: str, message: str, code: int):
    """One red line, `label: message`, and exit `code`."""
    err.print(f"[red]{label}:[/red] {escape(message)}", highlight=False)
    raise typer.Exit(code)


class _DropExpected(logging.Filter):
    def __init__(self, expected: tuple[type[BaseException], ...]):
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], self.expected))


def _quiet_prefect_tracebacks(expected: tuple[type[BaseException], ...]) -> None:
    """Prefect logs every flow exception with its traceback on the console; for the expected
    ones the red line says it all (the flow run's log in the UI keeps the full record)."""
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, _DropExpected)]:
            handler.removeFilter(old)
        handler.addFilter(_DropExpected(expected))


def _workspace():
    """The workspace, or one red line when its catalog cannot be opened."""
    from sqlalchemy.exc import OperationalError

    from flows.workspace import Workspace

    try:
        return Workspace.open()
    except OperationalError as e:
        _fail("catalog error", _one_line(e), 1)


@app.command()
def validate(curriculum: Path = CurriculumArg) -> None:
    """Check a curriculum: keys, types, files and templates it names. Exit 0 when valid."""
    spec = _load(curriculum)
    out.print(f"[green]ok[/green] {curriculum}: curriculum '{spec.name}', "
              f"{spec.staircase.rounds} round(s), teacher {spec.teacher.backend}:{spec.teacher.model}")


@app.command()
def ingest(curriculum: Path = CurriculumArg, as_json: bool = JsonOpt) -> None:
    """Read the curriculum's corpus, hold out the eval split, write corpus/eval/rejects shards."""
    _load(curriculum, flow=True)
    from flows.ingest import ingest_flow
    from flows.params import StageParams

    result = _run_flow(ingest_flow, StageParams, curriculum=str(curriculum))
    if as_json:
        _emit_json(result)
        return
    out.print(f"run [bold]{result.run_id}[/bold]: {result.train_rows} train rows, "
              f"{result.eval_rows} eval rows, {result.rejected} rejected")
    for reason, n in result.rejects_by_reason.items():
        out.print(f"  rejected {n:>6}  {reason}")


@app.command()
def generate(curriculum: Path = CurriculumArg, run_id: Optional[str] = typer.Option(
        None, "--run", help="Generate inside this run (default: resume the curriculum's "
        "unfinished generate run, else start one)."), as_json: bool = JsonOpt) -> None:
    """Ask the teacher to rewrite the corpus (ingesting first when needed): generated shards."""
    _load(curriculum, flow=True)
    from flows.generate import generate_flow
    from flows.params import StageParams

    result = _run_flow(generate_flow, StageParams, curriculum=str(curriculum), run_id=run_id)
    if as_json:
        _emit_json(result)
        return
    out.print(generate_report(result))


def generate_report(r) -> str:
    lines = [f"run [bold]{r.run_id}[/bold]: {r.rows_written} rows from {r.requests} requests "
             f"to {r.teacher} ({r.cache_hits} cache hits, {r.sent} sent, "
             f"{r.resumed_requests} resumed)"
             + (" [dim](reused finished stage)[/dim]" if r.reused_stage else ""),
             f"  tokens: {r.prompt_tokens} in, {r.completion_tokens} out"
             + (f", cost ${r.cost_usd:.4f}" if r.cost_usd is not None else "")]
    for reason, n in r.errors_by_reason.items():
        lines.append(f"  error {n:>6}  {reason}")
    for name in ("verify", "judge"):
        if getattr(r, f"{name}_requests"):
            lines.append(f"  {name}: {getattr(r, f'{name}_answered')} of "
                         f"{getattr(r, f'{name}_requests')} requests answered about "
                         f"{getattr(r, f'{name}_rows')} rows "
                         f"({getattr(r, f'{name}_cache_hits')} cache hits)")
    if not r.complete:
        why = "budget reached" if r.budget_exhausted else f"{r.unanswered} requests unanswered"
        lines.append(f"  [yellow]incomplete[/yellow] ({why}): run the same command to resume")
    return "\n".join(lines)


@app.command()
def curate(curriculum: Path = CurriculumArg,
           run_id: Optional[str] = typer.Option(None, "--run", help="Run id (default: the newest "
                                                "run of this curriculum with generated rows)."),
           round_index: int = typer.Option(0, "--round", help="Staircase round to curate."),
           as_json: bool = JsonOpt) -> None:
    """Filter, dedup, decontaminate and order the latest generated rows: kept/dropped/train shards."""
    _load(curriculum, flow=True)
    from flows.curate import CurateError, curate_flow
    from flows.params import RoundParams

    result = _run_flow(curate_flow, RoundParams, curriculum=str(curriculum), run_id=run_id,
                       round_index=round_index,
                       stage_errors={CurateError: ("cannot curate", 1)})
    if as_json:
        _emit_json(result)
        return
    out.print(f"run [bold]{result.run_id}[/bold] round {result.round}: "
              f"{result.kept} kept, {result.dropped} dropped of {result.generated}")
    for reason, n in result.drops_by_reason.items():
        out.print(f"  dropped {n:>6}  {reason}")


def _variant(spec, changes: dict):
    """The curriculum with CLI changes applied, through every pre-flight check, or exit 2."""
    from flows.preflight import require
    from flows.spec import SpecError, with_changes

    try:
        return require(with_changes(spec, changes))
    except SpecError as e:
        err.print(f"[red]invalid curriculum[/red] {e}")
        raise typer.Exit(2) from None


def _trial_or_exit(call):
    """Run a trial; an unreachable teacher is one red line and exit 3, as for generate."""
    from flows.spec import SpecError
    from flows.teachers import TeacherUnreachable

    try:
        return call()
    except TeacherUnreachable as e:
        err.print(f"[red]teacher unreachable[/red] {e}")
        raise typer.Exit(3) from None
    except SpecError as e:
        err.print(f"[red]invalid curriculum[/red] {e}")
        raise typer.Exit(2) from None


def _cell(text, limit: int = 160) -> str:
    text = " ⏎ ".join((text or "").split("\n"))
    return text if len(text) <= limit else text[:limit - 1] + "…"


@app.command()
def preview(curriculum: Path = CurriculumArg,
            template: Optional[str] = typer.Option(
                None, "--template", help="Template name, or a template .yaml file (default: "
                "the curriculum's generate.template)."),
            teacher_model: Optional[str] = typer.Option(
                None, "--teacher-model", help="Ask this teacher.model instead."),
            n: int = typer.Option(8, "--n", min=1, help="How many corpus rows (the first train "
                                  "rows, where generate starts)."),
            as_json: bool = JsonOpt) -> None:
    """Ask the teacher about N corpus rows and show what curation would keep.

    Parse rate, kept rate, accuracy against gold, tokens and time, exactly as a generate + curate
    run of those rows. Records no run; the answers go to the response cache, so the run
    afterwards reuses them."""
    from flows.preview.compare import template_changes
    from flows.preview.trial import summary_line, trial

    changes = template_changes(template) if template else {}
    if teacher_model:
        changes["teacher.model"] = teacher_model
    spec = _variant(_load(curriculum), changes)
    result = _trial_or_exit(lambda: trial(spec, _workspace(), n))
    if as_json:
        _emit_json(result)
        return
    out.print(f"[bold]{result['template']}[/bold] sha256:{result['template_hash'][:12]} with "
              f"{result['teacher']}", highlight=False)
    table = Table("#", "question", "teacher's answer", "gold", "parsed answer", "verdict")
    for r in result["rows"]:
        verdict = "[green]kept[/green]" if r["verdict"] == "kept" else f"[red]{r['verdict']}[/red]"
        table.add_row(f"{r['row']}" + (f".{r['sample']}" if r["sample"] else ""),
                      _cell(r["question"], 80), _cell(r["reply"]), _cell(r["gold"], 20),
                      _cell(r["answer"] or r["parse_error"], 30), verdict)
    out.print(table)
    out.print(summary_line(result["measures"]), highlight=False)


@app.command()
def run(curriculum: Path = CurriculumArg, new: bool = typer.Option(
        False, "--new", help="Start a fresh run instead of resuming an unfinished one."),
        as_json: bool = JsonOpt) -> None:
    """Run the whole staircase the curriculum describes (resumes an unfinished run)."""
    _load(curriculum, flow=True)
    from flows.curate import CurateError
    from flows.evaluate import EvalError
    from flows.params import StaircaseParams
    from flows.staircase import staircase_flow
    from flows.train import TrainError

    result = _run_flow(staircase_flow, StaircaseParams, curriculum=str(curriculum), new=new,
                       stage_errors={CurateError: ("cannot curate", 1),
                                     TrainError: ("cannot train", 1),
                                     EvalError: ("cannot evaluate", 1)})
    _report(result["run_id"], as_json)


@app.command()
def report(run_id: str = typer.Argument(..., help="A run id from `stairs runs`."),
           as_json: bool = JsonOpt) -> None:
    """Print a staircase run's per-round report again (and rewrite its PNG/HTML)."""
    _report(run_id, as_json)


def _report(run_id: str, as_json: bool) -> None:
    from flows.report import rich_table, write_report
    from flows.runinfo import run_details

    ws = _workspace()
    try:
        details = run_details(ws, run_id)
    except KeyError:
        _fail("unknown run", f"no run {run_id!r} (see `stairs runs`)", 1)
    rounds = details["rounds"]
    paths = write_report(ws, run_id, rounds)
    if as_json:
        _emit_json({"run_id": run_id, **details,
                    "report": {k: str(v) for k, v in paths.items()}})
        return
    _print_details(details)
    out.print(rich_table(rounds))
    out.print(f"plot: {paths['png']}\nreport: {paths['html']}")


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
        _fail("unknown run", f"no run {run_id!r} (see `stairs runs`)", 1)
    if as_json:
        _emit_json(details)
        return
    _print_details(details)


@app.command()
def lineage(model: str = typer.Argument(..., help="catalog:<id> (ids in `stairs show RUN`)."),
            as_json: bool = JsonOpt) -> None:
    """Where a model came from: its parents back to the base, the shards each was trained on,
    and every shard those came from back to the corpus, with stage, round, template, teacher."""
    from flows.lineage import model_lineage

    raw = model.removeprefix("catalog:")
    if not raw.isdigit():
        _fail("bad model", f"{model!r}: expected catalog:<model id>, e.g. catalog:3", 2)
    try:
        doc = model_lineage(_workspace(), int(raw))
    except KeyError:
        _fail("unknown model", f"no model {raw} in the catalog (see `stairs show RUN`)", 1)
    if as_json:
        _emit_json(doc)
        return
    models = Table("model", "name", "kind", "format", "run", "round", "trained on shards")
    for m in doc["models"]:
        models.add_row(str(m["id"]), m["name"], m["kind"], m["quant"] or m["format"],
                       m["run_id"] or "", "" if m["round"] is None else str(m["round"]),
                       ", ".join(map(str, m["trained_on"])))
    out.print(models)
    shards = Table("shard", "kind", "rows", "stage", "round", "template", "teacher",
                   "from shards")
    for s in doc["shards"]:
        shards.add_row(str(s["id"]), s["kind"], str(s["rows"]), s["stage"] or "",
                       "" if s["round"] is None else str(s["round"]), s["template"] or "",
                       s["teacher"] or "", ", ".join(map(str, s["parents"])))
    out.print(shards)


@app.command()
def export(run_id: str = typer.Argument(..., help="A run id from `stairs runs`."),
           to: Path = typer.Option(..., "--to", help="New (or empty) folder to write."),
           stage: str = typer.Option("curate", help="curate (kept rows), generate (all rows) "
                                     "or ingest (the corpus)."),
           round_index: Optional[int] = typer.Option(None, "--round", help="Staircase round "
                                                     "(default: the newest)."),
           push_to_hub: Optional[str] = typer.Option(
               None, "--push-to-hub", help="Also upload to this Hub dataset repo (user/name)."),
           token_env: str = typer.Option("HF_TOKEN", help="Environment variable holding the "
                                         "Hub token."),
           private: bool = typer.Option(False, help="Create the Hub repo as private."),
           as_json: bool = JsonOpt) -> None:
    """Write a run's rows as a Hugging Face dataset: save_to_disk + Parquet + dataset card."""
    from flows.export import ExportError, export_run
    from flows.export import push_to_hub as push

    try:
        written = export_run(_workspace(), run_id, to, stage=stage, round_index=round_index)
        if push_to_hub:
            written["hub"] = push(to, push_to_hub, token_env=token_env, private=private)
    except ExportError as e:
        _fail("export error", str(e), 1)
    if as_json:
        _emit_json(written)
        return
    out.print(f"{written['rows']} {written['kind']} rows of run {run_id} -> {written['folder']}"
              + (f"\nhub: {written['hub']}" if "hub" in written else ""))


@app.command()
def train(curriculum: Path = CurriculumArg,
          run_id: Optional[str] = typer.Option(None, "--run", help="Run whose curated rows to "
                                               "train on (default: the latest one)."),
          round_index: int = typer.Option(0, "--round", help="Staircase round."),
          as_json: bool = JsonOpt) -> None:
    """Fine-tune the student on a run's curated rows; score it and its base on held-out rows."""
    _load(curriculum, flow=True)
    from flows.params import RoundParams
    from flows.train import TrainError, train_flow

    result = _run_flow(train_flow, RoundParams, curriculum=str(curriculum), run_id=run_id,
                       round_index=round_index, stage_errors={TrainError: ("cannot train", 1)})
    if as_json:
        _emit_json(result)
        return
    out.print(f"run [bold]{result.run_id}[/bold]: student model {result.student_model_id} "
              f"({result.objective}, {result.steps} steps, loss {result.first_loss:.3f}"
              f" -> {result.final_loss:.3f})")
    for key in ("base_accuracy", "student_accuracy"):
        if getattr(result, key) is not None:
            out.print(f"  {key.replace('_', ' ')}: {getattr(result, key):.1%} of "
                      f"{result.eval_rows}")


@app.command("eval")
def eval_(model: str = typer.Argument(..., help="A model folder, a .gguf file, 'smollm2-135m' "
                                      "or 'catalog:<id>'."),
          curriculum: Path = typer.Option(..., "--curriculum", help="Curriculum YAML whose "
                                          "held-out rows and template to use."),
          rows: Optional[int] = typer.Option(None, help="Score only this many eval rows."),
          as_teacher: bool = typer.Option(False, "--as-teacher", help="Ask with the template's "
                                          "worked examples, as the staircase scores a teacher."),
          as_json: bool = JsonOpt) -> None:
    """Score any model on a curriculum's held-out rows (exact-match accuracy, loss, tokens/s)."""
    _load(curriculum, flow=True)
    from flows.evaluate import EvalError, eval_flow
    from flows.params import EvalParams

    result = _run_flow(eval_flow, EvalParams, model=model, curriculum=str(curriculum), rows=rows,
                       as_teacher=as_teacher, stage_errors={EvalError: ("cannot evaluate", 1)})
    if as_json:
        _emit_json(result)
        return
    out.print(f"{model} ({result.format}): accuracy {result.accuracy:.1%} "
              f"({result.correct}/{result.n}), {result.tokens_per_s:.1f} tokens/s"
              + (f", eval loss {result.eval_loss:.3f}" if result.eval_loss else "")
              + f"  [model {result.model_id}, run {result.run_id}]")


@app.command()
def quantize(curriculum: Path = CurriculumArg,
             run_id: Optional[str] = typer.Option(None, "--run", help="Add to this run "
                                                  "(its round-0 student); default: a new run."),
             as_json: bool = JsonOpt) -> None:
    """Quantize the run's student (the base model until one is trained): GGUF + llama.cpp
    k-quants, int8 absmax, int4; measure each on the held-out rows."""
    _load(curriculum, flow=True)
    from flows.params import RoundParams
    from flows.quantize import quantize_flow

    result = _run_flow(quantize_flow, RoundParams, curriculum=str(curriculum), run_id=run_id)
    if as_json:
        _emit_json(result)
        return
    stand_in = " (base model standing in for a student)" if result.student_is_base_stand_in \
        else ""
    out.print(f"run [bold]{result.run_id}[/bold]: quantized {result.student}{stand_in}")
    table = Table("artifact", "model id", "MB", "bits/w", "accuracy", "ppl", "tok/s", "engine")
    for r in result.table:
        table.add_row(r.artifact, str(r.model_id), f"{r.size_mb:.1f}",
                      f"{r.bits_per_weight:.2f}", f"{r.accuracy:.3f}",
                      f"{r.perplexity:.3f}", f"{r.tokens_per_s:.1f}", r.engine)
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

    def _stop(signum, frame):  # SIGTERM as well as Ctrl-C stops the child server cleanly
        raise KeyboardInterrupt

    # Installed before the child starts: a SIGTERM that lands while we still wait for the
    # server to answer must stop it too (CI caught that race once: exit -15, child orphaned).
    signal.signal(signal.SIGTERM, _stop)
    try:
        server = start_server(model, port=port or None, n_ctx=n_ctx, threads=threads)
    except (ModelRefError, ServeError) as e:
        _fail("cannot serve", str(e), 1)
    except KeyboardInterrupt:  # start_server already stopped the child
        out.print("stopped")
        return
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
    from flows.ingest import demo

    try:
        with open(out_file, "w", encoding="utf-8") as f:
            for row in demo.generate(rows, seed=seed, people=people, colors=colors,
                                     max_count=max_count, tasks=tasks.split(",")):
                f.write(json.dumps(row) + "\n")
    except OSError as e:
        _fail("cannot write", str(e), 1)
    except ValueError as e:  # an unknown task name
        _fail("invalid option", str(e), 2)
    out.print(f"wrote {rows} rows to {out_file}")


PoolOpt = typer.Option(None, "--pool", help="Work pool (default: the one in deploy/prefect.yaml).")
ApiOpt = typer.Option(None, "--api-url", help="Prefect API (default: PREFECT_API_URL, else "
                      "the local `stairs server` at http://127.0.0.1:4200/api).")


@app.command()
def server(host: str = typer.Option("127.0.0.1", help="Address to bind."),
           port: int = typer.Option(4200, help="Port for the API and the UI.")) -> None:
    """Start a Prefect server with its UI (prefect server start; state under STAIRS_HOME)."""
    import subprocess

    from flows.deployments import server_command

    cmd, env = server_command(host, port)
    out.print(f"Prefect UI and API on http://{host}:{port} (Ctrl-C stops it)")
    raise typer.Exit(subprocess.call(cmd, env=env))


@app.command()
def deploy(pool: Optional[str] = PoolOpt, api_url: Optional[str] = ApiOpt,
           name: Optional[list[str]] = typer.Option(
               None, "--name", help="Only this deployment (repeatable); default: all.")) -> None:
    """Register the deployments of deploy/prefect.yaml (prefect deploy --all) and create the
    process work pool if it is missing."""
    from flows.deployments import deploy as run_deploy

    code = run_deploy(pool=pool, names=name or None, api_url=api_url)
    raise typer.Exit(code)


@app.command()
def worker(pool: Optional[str] = PoolOpt, api_url: Optional[str] = ApiOpt,
           limit: Optional[int] = typer.Option(None, help="Most flow runs at once.")) -> None:
    """Start a worker that runs the deployments' flow runs (prefect worker start --pool)."""
    import subprocess

    from flows.deployments import PROJECT_ROOT, prefect_env, worker_command

    raise typer.Exit(subprocess.call(worker_command(pool, limit), env=prefect_env(api_url),
                                     cwd=PROJECT_ROOT))


@app.command("serve-flows")
def serve_flows(api_url: Optional[str] = ApiOpt, name: Optional[list[str]] = typer.Option(
        None, "--name", help="Only this deployment (repeatable); default: all.")) -> None:
    """Serve every deployment from this process (flow.serve): no work pool, no worker."""
    import os

    from flows.deployments import prefect_env
    from flows.deployments import serve_flows as run_serve

    os.environ.update(prefect_env(api_url))
    run_serve(names=name or None)
prompts_app = typer.Typer(help="Prompt templates (prompts/*.yaml): list, render, compare two, "
                               "history of versions.",
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
        _fail("template error", str(e), 2)
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


VariantArg = typer.Argument(..., help="A template name, a template .yaml file, or curriculum "
                            "keys: 'teacher.temperature=0.8,teacher.model=other'.")


@prompts_app.command("compare")
def prompts_compare(curriculum: Path = CurriculumArg, a: str = VariantArg, b: str = VariantArg,
                    n: int = typer.Option(30, "--n", min=1, help="How many corpus rows."),
                    as_json: bool = JsonOpt) -> None:
    """Two templates (or teachers, or sampling settings) on the same rows, side by side.

    Each side is a full `stairs preview`; then the rows where the two disagree."""
    from flows.preview.compare import compare

    spec = _load(curriculum)
    result = _trial_or_exit(lambda: compare(spec, _workspace(), a, b, n))
    if as_json:
        _emit_json(result)
        return
    sa, sb = result["a"], result["b"]
    table = Table("", f"A: {a}", f"B: {b}")
    table.add_row("template", f"{sa['template']} {sa['template_hash'][:12]}",
                  f"{sb['template']} {sb['template_hash'][:12]}")
    table.add_row("teacher", sa["teacher"], sb["teacher"])
    ma, mb = sa["measures"], sb["measures"]

    def pct(m, part, whole, rate):
        return f"{m[part]}/{m[whole]}" + ("" if m[rate] is None else f" ({m[rate]:.0%})")

    table.add_row("parsed", pct(ma, "parsed", "rows", "parse_rate"),
                  pct(mb, "parsed", "rows", "parse_rate"))
    table.add_row("kept", pct(ma, "kept", "rows", "kept_rate"), pct(mb, "kept", "rows",
                                                                   "kept_rate"))
    table.add_row("accuracy (gold)", pct(ma, "correct", "with_gold", "accuracy"),
                  pct(mb, "correct", "with_gold", "accuracy"))
    for key in ("prompt_tokens", "completion_tokens", "cache_hits", "sent", "seconds"):
        table.add_row(key.replace("_", " "), str(ma[key]), str(mb[key]))
    out.print(table)
    if not result["disagree"]:
        out.print("no row where they disagree")
        return
    rows = Table("#", "question", "gold", "A answer", "A verdict", "B answer", "B verdict",
                 title=f"{len(result['disagree'])} row(s) where they disagree")
    for d in result["disagree"]:
        rows.add_row(f"{d['row']}" + (f".{d['sample']}" if d["sample"] else ""),
                     _cell(d["question"], 80), _cell(d["gold"], 20), _cell(d["a"]["answer"], 30),
                     _cell(d["a"]["verdict"], 30), _cell(d["b"]["answer"], 30),
                     _cell(d["b"]["verdict"], 30))
    out.print(rows)


@prompts_app.command("history")
def prompts_history(template: str = typer.Argument(..., help="Template name, e.g. rationale."),
                    prompts_dir: Optional[Path] = typer.Option(
                        None, "--prompts-dir", help="Template folder (default: the project's "
                        "prompts/): which file is current, where --restore writes."),
                    show: Optional[str] = typer.Option(
                        None, "--show", help="Print the stored text of this version (a hash "
                        "prefix from the list)."),
                    restore: Optional[str] = typer.Option(
                        None, "--restore", help="Write this version (hash prefix) back to the "
                        "template's file."),
                    force: bool = typer.Option(
                        False, "--force", help="Let --restore overwrite a file whose current "
                        "text no run used (not in the catalog)."),
                    as_json: bool = JsonOpt) -> None:
    """Each version of a template that runs used, with its kept rate and students' accuracy.

    Versions are content hashes (first seen, runs); --show prints one, --restore writes it back."""
    import hashlib

    from flows.prompting import template_path
    from flows.prompting.history import template_history, template_text

    catalog = _workspace().catalog
    if show or restore:
        try:
            name, content_hash, text = template_text(catalog, show or restore)
        except KeyError as e:
            err.print(f"[red]cannot {'show' if show else 'restore'}[/red] {e.args[0]} "
                      f"(see `stairs prompts history {template}`)")
            raise typer.Exit(1) from None
        if show:
            sys.stdout.write(text)
            return
        path = template_path(name, prompts_dir)
        if path.exists() and not force:
            current = hashlib.sha256(path.read_bytes()).hexdigest()
            if not catalog.template_texts(current):
                # Unsaved work: the file's text is in no run, so nothing could bring it back.
                err.print(f"[red]not restored[/red] {path} holds a version no run used "
                          f"(sha256:{current[:12]}); --force overwrites it")
                raise typer.Exit(1)
        path.write_text(text, encoding="utf-8")
        out.print(f"restored {name} sha256:{content_hash[:12]} to {path}", highlight=False)
        return
    versions = template_history(catalog, template)
    path = template_path(template, prompts_dir)
    current = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    for v in versions:
        v["current"] = v["content_hash"] == current
    if as_json:
        _emit_json({"template": template, "path": str(path), "current_hash": current,
                    "versions": versions})
        return
    if not versions:
        out.print(f"no run has used template {template!r} yet")
        return
    table = Table("version", "first seen", "runs", "kept / generated", "kept rate",
                  "student accuracy", title=f"{template} ({path})")
    for v in versions:
        accs = ", ".join(f"{s['accuracy']:.1%}" for s in v["students"]) or "no student"
        table.add_row(v["content_hash"][:12] + (" (current)" if v["current"] else ""),
                      v["first_seen"][:19], ", ".join(v["runs"]),
                      f"{v['kept']} / {v['generated']}",
                      "" if v["kept_rate"] is None else f"{v['kept_rate']:.1%}", accs)
    out.print(table)


def _print_details(d: dict) -> None:
    run = d["run"]
    out.print(f"[bold]{run['id']}[/bold]  {run['curriculum']}  {run['status']}"
              + (f"  [red]{run['error']}[/red]" if run["error"] else ""))
    from flows.artifacts import STAGE_COLUMNS, stage_cells

    table = Table(*STAGE_COLUMNS)
    for st in d["stages"]:
        table.add_row(*stage_cells(st))
    out.print(table)
    if d["rejects_by_reason"]:
        out.print("rejects / drops by reason: " + ", ".join(
            f"{k}={v}" for k, v in d["rejects_by_reason"].items()))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
