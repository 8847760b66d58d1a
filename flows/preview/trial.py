"""A trial of a curriculum's generate + curate on its first N corpus rows: what `stairs preview`,
`stairs prompts compare` and the `preview` deployment show.

Nothing here re-implements a stage. The rows are the first train rows generate starts with, split
by ingest's own reader; requests are planned and sent by generate's own code (response cache,
limits, budget), replies become rows through generate's row builder (the template's parser), and
curation's own pipeline judges them against the same held-out rows and benchmark files. So a
trial keeps exactly what a generate + curate run of those rows keeps, and every answer lands in
the response cache: the run afterwards pays nothing for the rows already previewed.

A trial records no run, stage or shard: it is a look before a run, not a step of one.
"""

from __future__ import annotations

import time

import polars as pl
import pyarrow as pa

from flows import artifacts
from flows.curate import decontam
from flows.curate.answers import matches, normalized
from flows.curate.pipeline import curate_rows, drops_by_reason
from flows.generate import plan, sampling_for
from flows.generate.dispatch import dispatch
from flows.generate.rows import GENERATED_SCHEMA, build_rows
from flows.ingest import read_rows, source_fingerprint
from flows.ingest.rows import CORPUS_SCHEMA
from flows.prompting.check import generate_template
from flows.spec import Curriculum
from flows.teachers import make_teacher
from flows.teachers.cache import ResponseCacheStore
from flows.workspace import Workspace


def corpus_rows(spec: Curriculum, ws: Workspace, n: int) -> tuple[list[dict], pl.LazyFrame]:
    """The first n train rows and all held-out rows, split exactly as ingest splits them: from
    an identical finished ingest when the catalog has one, else read with ingest's own reader
    (the whole corpus: which rows are held out depends on every row)."""
    done = ws.catalog.find_stage("ingest", source_fingerprint(spec))
    if done is not None:
        train = ws.store.table(ws.shards(done, "corpus")).slice(0, n).to_pylist()
        return train, ws.store.scan(ws.shards(done, "eval"))
    kept, _rejects = read_rows(spec)
    train = [r for r in kept if r["split"] == "train"][:n]
    evals = pa.Table.from_pylist([r for r in kept if r["split"] == "eval"], CORPUS_SCHEMA)
    return train, pl.from_arrow(evals).lazy()


class _Rows(list):
    """Where dispatch hands the built rows (generate hands them to its shard writer)."""

    def add(self, rows: list[dict]) -> None:
        self.extend(rows)


def trial(spec: Curriculum, ws: Workspace, n: int) -> dict:
    """Ask the curriculum's teacher about its first n train rows (each `teacher.samples` times),
    parse and curate the replies. Returns the rows with their verdicts and the measures."""
    template = generate_template(spec)
    tspec = spec.teacher
    teacher = make_teacher(tspec, base_dir=spec.base_dir)
    limit = n if spec.generate.max_rows is None else min(n, spec.generate.max_rows)
    sources, evals = corpus_rows(spec, ws, limit)
    requests = plan(sources, template, teacher.identity, sampling_for(tspec, template),
                    tspec.samples, few_shot=tspec.few_shot)
    rows = _Rows()
    cache = ResponseCacheStore(ws.catalog)
    bar = artifacts.progress("preview", template.name, total=len(requests))
    started = time.monotonic()
    try:
        tally = dispatch(
            requests=requests, teacher=teacher, cache=cache, writer=rows, progress=bar,
            budget_spec=tspec,
            build_rows=lambda req, reply: build_rows(
                source=req.tag, request=req, reply=reply, template=template,
                teacher_name=teacher.name, round_index=0))
    finally:
        cache.close()
    seconds = time.monotonic() - started
    d = spec.curation.decontaminate
    grams = decontam.curation_ngrams(evals, [spec.resolve(p) for p in d.benchmarks], d.ngram)
    generated = pl.from_arrow(pa.Table.from_pylist(rows, GENERATED_SCHEMA))
    curated = curate_rows(generated.lazy(), spec.curation, eval_grams=grams) if rows else None
    position = {s["id"]: i + 1 for i, s in enumerate(sources)}
    return {"template": template.name, "template_hash": template.content_hash,
            "teacher": teacher.name, "rows": _table(curated, position),
            "measures": _measures(curated, tally, teacher.usage.requests, seconds,
                                  len(sources), len(requests))}


def _table(curated: pl.DataFrame | None, position: dict[str, int]) -> list[dict]:
    if curated is None:
        return []
    out = [{"row": position[r["source_id"]], "sample": r["sample_index"], "id": r["id"],
            "source_id": r["source_id"], "question": r["question"], "reply": r["response"],
            "gold": r["gold_answer"], "answer": r["answer"], "rationale": r["rationale"],
            "parse_error": r["error"], "verdict": "kept" if r["keep"] else r["drop_reason"]}
           for r in curated.iter_rows(named=True)]
    return sorted(out, key=lambda r: (r["row"], r["sample"], r["id"]))


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _measures(curated: pl.DataFrame | None, tally, sent: int, seconds: float, source_rows: int,
              requests: int) -> dict:
    m = {"source_rows": source_rows, "requests": requests, "rows": 0, "parsed": 0, "kept": 0,
         "with_gold": 0, "correct": 0, "prompt_tokens": 0, "completion_tokens": 0}
    if curated is not None:
        # Accuracy uses curation's own answer rule (the one its wrong_answer filter applies).
        c = curated.select(
            rows=pl.len(), parsed=pl.col("error").is_null().sum(), kept=pl.col("keep").sum(),
            with_gold=(normalized("gold_answer") != "").sum(),
            correct=((normalized("gold_answer") != "") & matches("answer", "gold_answer")).sum(),
            prompt_tokens=pl.col("prompt_tokens").sum(),
            completion_tokens=pl.col("completion_tokens").sum()).row(0, named=True)
        m.update({k: int(v or 0) for k, v in c.items()})
    m.update(parse_rate=_share(m["parsed"], m["rows"]), kept_rate=_share(m["kept"], m["rows"]),
             accuracy=_share(m["correct"], m["with_gold"]),
             drops_by_reason=drops_by_reason(curated) if curated is not None else {},
             cache_hits=tally.cache_hits, sent=sent, unanswered=tally.unanswered,
             budget_exhausted=tally.budget_exhausted, seconds=round(seconds, 2))
    return m


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def summary_line(m: dict) -> str:
    """The measures in one line (the CLI prints it, the artifact describes its table with it)."""
    accuracy = (f"accuracy {m['correct']}/{m['with_gold']} ({_pct(m['accuracy'])}) against gold"
                if m["with_gold"] else "no gold answers")
    return (f"{m['rows']} rows from {m['source_rows']} corpus rows: parsed {m['parsed']} "
            f"({_pct(m['parse_rate'])}), kept {m['kept']} ({_pct(m['kept_rate'])}), {accuracy}; "
            f"tokens {m['prompt_tokens']} in, {m['completion_tokens']} out; "
            f"{m['cache_hits']} answered from the cache, {m['sent']} sent; {m['seconds']:.1f} s")
