"""The workspace a stage runs in: the catalog, the shard store, and the run/stage bookkeeping
every stage shares (start, finish, fail, reuse of identical finished work, the run lock, runs
left behind by processes that died)."""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from sqlalchemy.exc import SQLAlchemyError

from flows.urls import redact
from storage.catalog import Catalog
from storage.locks import LEASE_S, alive
from storage.shards import ShardStore, stage_folder
from storage.tables import Run, Shard, Stage, utcnow

ABANDONED = ("ended without recording why: its process was killed, or could not write the "
             "catalog (disk full, read-only home); run the same command to resume")


def _ended_by(e: BaseException) -> str:
    """'failed' for an error; 'stopped' for Ctrl-C, SIGTERM (Prefect raises its own
    TerminationSignal for it inside a flow run) and exits: the work is resumable."""
    return "failed" if isinstance(e, Exception) else "stopped"


class UnknownRun(LookupError):
    """A run id that is not in the catalog."""


@dataclass
class StageRun:
    """Handed to a stage body: the Stage row, plus a summary dict saved when the body ends."""

    stage: Stage
    summary: dict = field(default_factory=dict)

    @property
    def id(self) -> int:
        return self.stage.id


@dataclass
class RunScope:
    """The run a flow works in. A run the flow created is finished when the scope ends, with
    `status` (the body may set "stopped" and an `error` for partial work)."""

    id: str
    owned: bool
    status: str = "completed"
    error: str | None = None


@dataclass
class Workspace:
    catalog: Catalog
    store: ShardStore

    @classmethod
    def open(cls) -> "Workspace":
        catalog = Catalog()
        ws = cls(catalog=catalog, store=ShardStore(catalog))
        ws.mark_abandoned()
        return ws

    @classmethod
    def attach(cls) -> "Workspace":
        """The workspace as a worker of the task runner sees it (its environment names the
        same catalog and shards): a flow run elsewhere owns the run, so nothing is marked."""
        catalog = Catalog()
        return cls(catalog=catalog, store=ShardStore(catalog))

    def mark_abandoned(self) -> list[str]:
        """Runs still 'running' that no live process holds (killed, or their end could not be
        written) become 'failed', with their running stages, when the next command opens the
        workspace. Best effort: a catalog that cannot be written now is left as it is (and
        `stairs show` says the run has no live process). Returns the runs it marked."""
        marked = []
        try:
            for run in self.catalog.runs_with_status("running"):
                if self.live(run):
                    continue
                for st in self.catalog.stages(run.id):
                    if st.status == "running":
                        self.catalog.finish_stage(st.id, "failed", error=ABANDONED)
                self.catalog.finish_run(run.id, "failed", error=ABANDONED)
                marked.append(run.id)
        except SQLAlchemyError:
            pass
        return marked

    def live(self, run: Run) -> bool:
        """Whether a live process may be working in the run: it holds the run's lock, or the
        run is too new to have been locked yet (a run is created, then locked)."""
        lock = self.catalog.locks.holder(run.id)
        if lock is not None:
            return alive(lock)
        return time.time() - run.created_at.timestamp() < LEASE_S

    def start_run(self, spec, command: str) -> Run:
        return self.catalog.create_run(
            curriculum=spec.name, path=str(spec.source or ""), spec_json=spec.spec_json(),
            spec_hash=spec.fingerprint(), command=command)

    def resume_or_start(self, spec, command: str, *, new: bool = False) -> str:
        """The newest unfinished run of this exact curriculum that `command` started (so the same
        command resumes it), else a new run; new=True always starts one."""
        if not new:
            previous = self.catalog.latest_run(spec.fingerprint())
            if previous is not None and previous.status != "completed" \
                    and previous.command == command:
                return previous.id
        return self.start_run(spec, command).id

    @contextmanager
    def run_scope(self, run_id: str | None, start: Callable[[], str]) -> Iterator[RunScope]:
        """Work inside `run_id` (left as it is: its owner finishes it) or inside a run made or
        resumed by `start()`, which this scope finishes: completed, stopped on Ctrl-C, failed
        with the error. Either way the scope holds the run's lock (storage/locks.py): a second
        process entering the same run gets RunLocked naming this one."""
        if run_id is not None and self.catalog.get_run(run_id) is None:
            raise UnknownRun(f"no run {run_id!r} in the catalog {redact(self.catalog.url)} "
                             "(see `stairs runs`)")
        scope = RunScope(id=run_id or start(), owned=run_id is None)
        self.catalog.locks.acquire(scope.id)
        try:  # the run is finished before its lock is given back
            if scope.owned:  # a resumed run is running again
                self.catalog.reopen_run(scope.id)
            try:
                yield scope
            except BaseException as e:
                if scope.owned:
                    self.catalog.finish_run(scope.id, _ended_by(e),
                                            error=f"{type(e).__name__}: {e}")
                raise
            if scope.owned:
                self.catalog.finish_run(scope.id, scope.status, error=scope.error)
        finally:
            self.catalog.locks.release(scope.id)

    @contextmanager
    def stage(self, run_id: str, name: str, *, round_index: int | None = None,
              fingerprint: str | None = None, params: dict | None = None) -> Iterator[StageRun]:
        """Record a stage around its body: completed with its summary, or failed/stopped with
        the error. Shards the body wrote before failing stay registered (nothing is lost)."""
        stage = self.catalog.start_stage(run_id, name, round_index=round_index,
                                         fingerprint=fingerprint, params=params)
        try:  # what earlier attempts that died left in this stage's folders of this run
            self.store.sweep(run_id, stage_folder(name, round_index))
        except OSError:
            pass  # leftovers cost disk space, never correctness: readers go by the catalog
        run = StageRun(stage)
        try:
            yield run
        except BaseException as e:
            stopped = _ended_by(e) == "stopped"
            self.catalog.finish_stage(stage.id, _ended_by(e), summary=run.summary,
                                      error="interrupted" if stopped else
                                      f"{type(e).__name__}: {e}")
            raise
        run.stage = self.catalog.finish_stage(stage.id, "completed", summary=run.summary)

    def reuse(self, run_id: str, name: str, fingerprint: str, *,
              round_index: int | None = None) -> Stage | None:
        """If identical work finished before (any run), record it in this run and return it."""
        done = self.catalog.find_stage(name, fingerprint)
        if done is None:
            return None
        if done.run_id == run_id and done.round_index == round_index:
            return done
        origin_id = done.reused_from_id or done.id
        # Started and finished now: in this run it took no time (the origin, through
        # reused_from_id, keeps when the work itself ran).
        now = utcnow()
        stage = Stage(run_id=run_id, name=name, round_index=round_index, fingerprint=fingerprint,
                      reused_from_id=origin_id, status="completed",
                      params_json=done.params_json, summary_json=done.summary_json,
                      started_at=now, finished_at=now)
        return self.catalog.add(stage)

    def shards(self, stage: Stage, kind: str | None = None) -> list[Shard]:
        """A stage's shards, following reuse back to the stage that wrote them."""
        return self.catalog.shards(stage.reused_from_id or stage.id, kind)

    def latest_stage(self, name: str, *, run_id: str | None = None,
                     round_index: int | None = None) -> Stage | None:
        stages = [s for s in self.catalog.stages(run_id) if s.name == name
                  and s.status == "completed"] if run_id else []
        if round_index is not None:
            stages = [s for s in stages if s.round_index == round_index]
        return stages[-1] if stages else None

    def stage_shards(self, run_id: str, name: str, kind: str, *,
                     round_index: int | None = None) -> list[Shard]:
        """Shards of one kind from the newest completed `name` stage of a run (of that round,
        when given); empty when there is none."""
        stage = self.latest_stage(name, run_id=run_id, round_index=round_index)
        return self.shards(stage, kind) if stage else []

    def summary(self, stage: Stage) -> dict:
        return json.loads(stage.summary_json or "{}")
