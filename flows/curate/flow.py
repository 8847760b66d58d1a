"""Curate flow: turn a round's generated rows into the rows the student trains on.

    stairs curate curricula/quickstart.yaml            # latest run of that curriculum
    stairs curate curricula/quickstart.yaml --run RUN --round 0 --json

Reads the round's latest "generate" stage shards (kind "generated") and the run's held-out
"eval" shards (for decontamination), runs flows/curate/pipeline.py and writes three shard
kinds, each linked to the shards it came from: "kept" (rows that survived), "dropped" (every
other row, with its named reason: nothing is silently lost) and "train" (the kept rows in
curriculum order). The stage summary counts drops by reason (`stairs show RUN --json`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from prefect import flow
from prefect.context import FlowRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from flows.climb import level_of
from flows.curate import decontam
from flows.curate.pipeline import drops_by_reason, finish, prepare
from flows.orchestration import in_flow_run, map_step, step, task_runner, worker_name
from flows.params import RoundParams
from flows.prompting.hints import RATIONALIZE_TEMPLATE
from flows.results import CurateResult
from flows.spec import Curriculum
from flows.workspace import Workspace
from storage.tables import Shard


class CurateError(RuntimeError):
    """Curation cannot start: the message says what is missing and what to run."""


def _fingerprint(spec: Curriculum, shards: list[Shard]) -> str:
    # How the rows are partitioned changes where the work runs, never the rows.
    curation = spec.curation.model_dump(mode="json", exclude={"partition_rows"})
    section = json.dumps({"curation": curation}, sort_keys=True).encode()
    h = hashlib.sha256(hashlib.sha256(section).hexdigest()[:16].encode())
    for s in shards:
        h.update(s.checksum.encode())
    for path in spec.curation.decontaminate.benchmarks:
        h.update(hashlib.sha256(spec.resolve(path).read_bytes()).hexdigest().encode())
    return h.hexdigest()[:16]


def _inputs(ws: Workspace, run_id: str, round_index: int):
    """Generated shards, the review passes' shards ({kind: shards}) and the held-out shards."""
    gen = ws.latest_stage("generate", run_id=run_id, round_index=round_index)
    if gen is None:
        raise CurateError(f"run {run_id} has no completed generate stage for round {round_index}:"
                          " run `stairs generate` (or `stairs run`) first")
    generated = ws.shards(gen, "generated")
    reviews = {kind: ws.shards(gen, kind) for kind in ("verified", "judged")}
    ingest = ws.latest_stage("ingest", run_id=run_id)
    evals = ws.shards(ingest, "eval") if ingest is not None else []
    return generated, reviews, evals


# Inputs are a workspace and arrays: nothing Prefect could key a cache on.
@step(name="eval-ngrams")
def eval_ngrams(spec: Curriculum, ws: Workspace, evals: list[Shard]) -> np.ndarray:
    d = spec.curation.decontaminate
    return decontam.curation_ngrams(ws.store.scan(evals) if evals else None,
                                    [spec.resolve(p) for p in d.benchmarks], d.ngram)


@dataclass
class Partition:
    """Consecutive generated shards, about `curation.partition_rows` rows: one task's input."""

    index: int
    shards: list[Shard]
    curation: Any  # CurationSpec
    grams: np.ndarray
    verified: pl.DataFrame | None = None  # the generate stage's review passes (joined by row id)
    judged: pl.DataFrame | None = None
    ws: Any = None  # only when the task runs in the flow's own process

    def __getstate__(self):
        return {**self.__dict__, "ws": None}


def partitions(shards: list[Shard], rows: int) -> list[list[Shard]]:
    parts: list[list[Shard]] = []
    for shard in shards:
        if not parts or sum(s.rows for s in parts[-1]) + shard.rows > rows and parts[-1]:
            parts.append([])
        parts[-1].append(shard)
    return parts


@step(name="curate-partition")
def curate_partition(part: Partition) -> tuple[pl.DataFrame, dict]:
    """The per-row curation work of one partition, where the task runner puts it; returns the
    rows and where they were curated (the stage summary keeps it)."""
    ws = part.ws or Workspace.attach()
    try:
        rows = prepare(ws.store.scan(part.shards), part.curation, eval_grams=part.grams,
                       verified=part.verified, judged=part.judged)
    finally:
        if part.ws is None:
            ws.catalog.engine.dispose()
    where = {"partition": part.index, "rows": len(rows), "host": socket.gethostname(),
             "pid": os.getpid(), "worker": worker_name()}
    return rows, where


@step(name="curate-global")
def curate_global(spec: Curriculum, prepared: list[pl.DataFrame],
                  on_step=lambda name: None) -> pl.DataFrame:
    return finish(pl.concat(prepared, how="diagonal_relaxed"), spec.curation, on_step=on_step)


def run_pipeline(spec: Curriculum, ws: Workspace, generated: list[Shard],
                 grams: np.ndarray, reviews: dict[str, list[Shard]] | None = None
                 ) -> tuple[pl.DataFrame, list[dict]]:
    if not generated or sum(s.rows for s in generated) == 0:
        raise CurateError("the generate stage wrote no rows: nothing to curate")
    from flows.curate.pipeline import STEPS
    from flows.progress import bar

    read = {kind: ws.store.scan(shards).collect() if shards else None
            for kind, shards in (reviews or {}).items()}
    local = not in_flow_run() or isinstance(FlowRunContext.get().task_runner,
                                            ThreadPoolTaskRunner)
    parts = [Partition(i, shards, spec.curation, grams, verified=read.get("verified"),
                       judged=read.get("judged"), ws=ws if local else None)
             for i, shards in enumerate(partitions(generated, spec.curation.partition_rows))]
    rows = sum(s.rows for s in generated)
    with bar(f"curate {rows} rows", STEPS) as advance:
        def step_done(name):
            advance(description=f"curate {rows} rows: {name}")

        done = map_step(curate_partition, parts, name="curate-partition")
        step_done("filters")
        curated = curate_global(spec, [r for r, _ in done], on_step=step_done)
    return curated, [w for _, w in done]


def curate(spec: Curriculum, ws: Workspace, run_id: str, *, round_index: int = 0) -> CurateResult:
    """Run (or reuse) curation of one round's generated rows; returns the stage summary."""
    generated, reviews, evals = _inputs(ws, run_id, round_index)
    review_shards = [s for shards in reviews.values() for s in shards]
    fingerprint = _fingerprint(spec, generated + review_shards + evals)
    done = ws.reuse(run_id, "curate", fingerprint, round_index=round_index)
    if done is not None:
        return CurateResult.of(run_id, ws.summary(done))
    with ws.stage(run_id, "curate", round_index=round_index, fingerprint=fingerprint,
                  params={"curation": spec.curation.model_dump(mode="json")}) as st:
        grams = eval_ngrams(spec, ws, evals)
        rows, where = run_pipeline(spec, ws, generated, grams, reviews)
        kept = rows.filter(pl.col("keep"))
        dropped = rows.filter(~pl.col("keep"))
        parents = generated + review_shards + evals
        store = ws.store
        kept_shard = store.write(kept, stage=st.stage, kind="kept", parents=parents)
        store.write(dropped, stage=st.stage, kind="dropped", parents=parents)
        store.write(kept.sort("order"), stage=st.stage, kind="train", parents=[kept_shard])
        stages = kept.group_by("curriculum_stage").len().sort("curriculum_stage")
        st.summary.update({
            "round": round_index, "generated": len(rows), "kept": len(kept),
            "dropped": len(dropped), "drops_by_reason": drops_by_reason(rows),
            "eval_ngrams": int(len(grams)),
            "kept_by_stage": dict(zip(map(str, stages["curriculum_stage"].to_list()),
                                      stages["len"].to_list())),
            "mean_confidence": float(kept["confidence"].mean()) if len(kept) else None,
            "partitions": where,
            **review_counts(rows, kept),
            **climb_counts(spec, ws, run_id, rows, kept),
        })
    return CurateResult.of(run_id, st.summary)


def review_counts(rows: pl.DataFrame, kept: pl.DataFrame) -> dict:
    """What the review passes did (CurateResult fields) and what the kept rows train."""
    drops = rows["drop_reason"]
    targets = (kept["target"].fill_null("rationale") if "target" in kept.columns
               else pl.Series(["rationale"] * len(kept)))
    out = {"kept_by_target": {str(k): int(v) for k, v in targets.value_counts().iter_rows()},
           "judge_low": int((drops == "judge_low").sum()),
           "unverified": int((drops == "unverified").sum())}
    if "judge_score" in rows.columns:
        scores = rows["judge_score"].drop_nulls()
        out["judged"] = len(scores)
        out["mean_judge_score"] = float(scores.mean()) if len(scores) else None
    if "verify_total" in rows.columns:
        out["verified"] = int(rows["verify_total"].is_not_null().sum())
    return out


def climb_counts(spec: Curriculum, ws: Workspace, run_id: str, rows: pl.DataFrame,
                 kept: pl.DataFrame) -> dict:
    """Rationalized rows (written and kept) and, for demo levels, kept rows per level."""
    hinted = (pl.col("template") == RATIONALIZE_TEMPLATE) if "template" in rows.columns \
        else pl.lit(False)
    out = {"rationalized": int(rows.select(hinted.sum()).item()),
           "rationalized_kept": int(kept.select(hinted.sum()).item())}
    if spec.corpus.demo is None or not spec.corpus.demo.levels or not len(kept):
        return out
    ingest = ws.latest_stage("ingest", run_id=run_id)
    shards = ws.shards(ingest, "corpus") if ingest is not None else []
    if shards:
        corpus = ws.store.scan(shards).select("id", "meta").collect()
        level = {r["id"]: level_of(r) for r in corpus.iter_rows(named=True)}
        counts: dict[str, int] = {}
        for source in kept["source_id"].to_list():
            name = level.get(source)
            if name is not None:
                counts[name] = counts.get(name, 0) + 1
        out["kept_by_level"] = dict(sorted(counts.items()))
    return out


def latest_run_with(ws: Workspace, curriculum: str, stage: str) -> str | None:
    """Newest run of this curriculum (by name) that completed `stage`."""
    for run in ws.catalog.runs(limit=200):
        if run.curriculum == curriculum and ws.latest_stage(stage, run_id=run.id) is not None:
            return run.id
    return None


@flow(name="curate", log_prints=True, task_runner=task_runner())
def curate_flow(params: RoundParams) -> CurateResult:
    """Curate a round's generated rows (default run: the newest of this curriculum that has
    generated rows)."""
    spec, round_index = params.load(), params.round_index
    ws = Workspace.open()
    run_id = params.run_id or latest_run_with(ws, spec.name, "generate")
    if run_id is None:
        raise CurateError(f"no run of curriculum {spec.name!r} has generated rows: "
                          "run `stairs generate` (or `stairs run`) first")
    with ws.run_scope(run_id, lambda: run_id):  # the run's lock: one process in it at a time
        return curate(spec, ws, run_id, round_index=round_index)
