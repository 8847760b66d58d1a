"""The catalog: one SQLAlchemy database (SQLite with WAL by default, any URL via
STAIRS_CATALOG_URL) that records every run, round, stage, shard, model and metric with lineage."""

from __future__ import annotations

import json
import secrets
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import event, insert, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, create_engine, select

from storage.locks import RunLocks
from storage.tables import (
    Metric,
    Model,
    ModelShard,
    Round,
    Run,
    Shard,
    ShardParent,
    Stage,
    TemplateText,
    utcnow,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def new_run_id() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers (the CLI, the UI) run while a flow writes; busy_timeout rides out the
    # short write locks of concurrent tasks instead of failing with "database is locked".
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


# Any fixed number: the key of the PostgreSQL advisory lock that serializes schema upgrades.
MIGRATION_LOCK_KEY = 0x5741_4952  # "STAIR"-ish; only catalog upgrades take it


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (a no-op when it is already there).

    Processes that open one new catalog at once (two `stairs generate` on a fresh home, cluster
    workers) take turns: otherwise each sees no schema and all but one fail creating a table
    another is creating. PostgreSQL: a transaction-scoped advisory lock, taken before Alembic
    reads the current revision. SQLite: a lock file beside the database (its DDL does not wait
    on SQLite's own locks the way the upgrade needs)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _sqlite_file_lock(engine), engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                               {"key": MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")


def _sqlite_file_lock(engine: Engine):
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        return nullcontext()
    from filelock import FileLock

    return FileLock(f"{database}.upgrade.lock", timeout=300)


class Catalog:
    """Thin facade over the tables: the verbs stages need, each in its own short transaction."""

    def __init__(self, url: str | None = None):
        from flows.settings import catalog_url

        self.url = url or catalog_url()
        self.engine = make_engine(self.url)
        upgrade(self.engine)
        self.locks = RunLocks(self.engine, self.url)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def add(self, obj):
        with self.session() as s:
            s.add(obj)
            s.commit()
            s.refresh(obj)
            return obj

    def get(self, table, key):
        with self.session() as s:
            return s.get(table, key)

    # -- runs and stages -------------------------------------------------------------------
    def create_run(self, *, curriculum: str, path: str, spec_json: str, spec_hash: str,
                   command: str) -> Run:
        return self.add(Run(id=new_run_id(), curriculum=curriculum, curriculum_path=path,
                            curriculum_hash=spec_hash, spec_json=spec_json, command=command))

    def finish_run(self, run_id: str, status: str = "completed", error: str | None = None) -> None:
        with self.session() as s:
            run = s.get(Run, run_id)
            run.status, run.error, run.finished_at = status, error, utcnow()
            s.commit()

    def reopen_run(self, run_id: str) -> None:
        with self.session() as s:
            run = s.get(Run, run_id)
            run.status, run.error, run.finished_at = "running", None, None
            s.commit()

    def get_run(self, run_id: str) -> Run | None:
        return self.get(Run, run_id)

    def runs(self, limit: int = 50) -> list[Run]:
        with self.session() as s:
            return list(s.exec(select(Run).order_by(Run.created_at.desc()).limit(limit)))

    def runs_with_status(self, status: str) -> list[Run]:
        with self.session() as s:
            return list(s.exec(select(Run).where(Run.status == status)))

    def latest_run(self, curriculum_hash: str, status: str | None = None) -> Run | None:
        with self.session() as s:
            q = select(Run).where(Run.curriculum_hash == curriculum_hash)
            if status:
                q = q.where(Run.status == status)
            return s.exec(q.order_by(Run.created_at.desc())).first()

    def start_stage(self, run_id: str, name: str, *, round_index: int | None = None,
                    fingerprint: str | None = None, params: dict | None = None) -> Stage:
        return self.add(Stage(run_id=run_id, name=name, round_index=round_index,
                              fingerprint=fingerprint, params_json=json.dumps(params or {})))

    def finish_stage(self, stage_id: int, status: str = "completed", *,
                     summary: dict | None = None, error: str | None = None) -> Stage:
        with self.session() as s:
            stage = s.get(Stage, stage_id)
            stage.status, stage.error, stage.finished_at = status, error, utcnow()
            if summary is not None:
                stage.summary_json = json.dumps(summary, default=str)
            s.commit()
            s.refresh(stage)
            return stage

    def stages(self, run_id: str) -> list[Stage]:
        with self.session() as s:
            return list(s.exec(select(Stage).where(Stage.run_id == run_id).order_by(Stage.id)))

    def find_stage(self, name: str, fingerprint: str, *, run_id: str | None = None,
                   status: str = "completed") -> Stage | None:
        """The newest stage of this name and fingerprint: what lets finished work be reused."""
        with self.session() as s:
            q = select(Stage).where(Stage.name == name, Stage.fingerprint == fingerprint,
                                    Stage.status == status)
            if run_id is not None:
                q = q.where(Stage.run_id == run_id)
            return s.exec(q.order_by(Stage.id.desc())).first()

    def stages_named(self, *names: str, status: str = "completed") -> list[Stage]:
        """Every stage of these names across all runs, oldest first (template history)."""
        with self.session() as s:
            q = select(Stage).where(Stage.name.in_(names), Stage.status == status)
            return list(s.exec(q.order_by(Stage.id)))

    # -- prompt-template texts ---------------------------------------------------------------
    def save_template_text(self, name: str, content_hash: str, text: str) -> None:
        """Keep a template version's text (once per content hash: the same bytes hash alike)."""
        with self.session() as s:
            if s.get(TemplateText, content_hash) is None:
                s.add(TemplateText(content_hash=content_hash, name=name, text=text))
                try:
                    s.commit()
                except IntegrityError:  # another run stored the same version meanwhile
                    s.rollback()

    def template_texts(self, hash_prefix: str) -> list[TemplateText]:
        """Stored template versions whose content hash starts with `hash_prefix`."""
        with self.session() as s:
            q = select(TemplateText).where(TemplateText.content_hash.startswith(hash_prefix, autoescape=True))
            return list(s.exec(q))

    # -- shards ----------------------------------------------------------------------------
    def shards(self, stage_id: int, kind: str | None = None) -> list[Shard]:
        with self.session() as s:
            q = select(Shard).where(Shard.stage_id == stage_id)
            if kind is not None:
                q = q.where(Shard.kind == kind)
            return list(s.exec(q.order_by(Shard.id)))

    def run_shards(self, run_id: str) -> list[Shard]:
        with self.session() as s:
            return list(s.exec(select(Shard).where(Shard.run_id == run_id).order_by(Shard.id)))

    def register_shard(self, shard: Shard, parents: list[Shard] = ()) -> Shard:
        """Insert the shard's row and its lineage in one transaction; sets and returns its id.

        SQLAlchemy Core, not the ORM session: generate registers a shard every few hundred
        answers from a thread beside the request loop, and the session's unit of work held the
        GIL for most of a small shard's registration (no refresh either: every column is set
        here)."""
        with self.engine.begin() as conn:
            values = shard.model_dump(exclude={"id"})
            shard.id = conn.execute(insert(Shard).values(values)).inserted_primary_key[0]
            if parents:
                conn.execute(insert(ShardParent), [{"shard_id": shard.id, "parent_id": p.id}
                                                   for p in parents])
        return shard

    def shard_parents(self, shard_id: int) -> list[Shard]:
        with self.session() as s:
            q = select(Shard).join(ShardParent, ShardParent.parent_id == Shard.id).where(
                ShardParent.shard_id == shard_id)
            return list(s.exec(q))

    # -- models and metrics ----------------------------------------------------------------
    def add_model(self, model: Model, trained_on: list[Shard] = ()) -> Model:
        with self.session() as s:
            s.add(model)
            s.flush()
            for shard in trained_on:
                s.add(ModelShard(model_id=model.id, shard_id=shard.id))
            s.commit()
            s.refresh(model)
            return model

    def model_lineage(self, model_id: int) -> list[Model]:
        """The model, its parent, its parent's parent, ... back to the base."""
        chain: list[Model] = []
        with self.session() as s:
            model = s.get(Model, model_id)
            while model is not None:
                chain.append(model)
                model = s.get(Model, model.parent_id) if model.parent_id else None
        return chain

    def model_training_shards(self, model_id: int) -> list[Shard]:
        with self.session() as s:
            q = select(Shard).join(ModelShard, ModelShard.shard_id == Shard.id).where(
                ModelShard.model_id == model_id)
            return list(s.exec(q))

    def log_metric(self, name: str, value: float, *, run_id: str | None = None,
                   stage_id: int | None = None, model_id: int | None = None,
                   round_index: int | None = None, split: str | None = None,
                   meta: dict[str, Any] | None = None) -> Metric:
        return self.add(Metric(name=name, value=float(value), run_id=run_id, stage_id=stage_id,
                               model_id=model_id, round_index=round_index, split=split,
                               meta_json=json.dumps(meta or {}, default=str)))

    def metrics(self, *, run_id: str | None = None, model_id: int | None = None) -> list[Metric]:
        with self.session() as s:
            q = select(Metric)
            if run_id is not None:
                q = q.where(Metric.run_id == run_id)
            if model_id is not None:
                q = q.where(Metric.model_id == model_id)
            return list(s.exec(q.order_by(Metric.id)))

    def models(self, run_id: str | None = None) -> list[Model]:
        with self.session() as s:
            q = select(Model)
            if run_id is not None:
                q = q.where(Model.run_id == run_id)
            return list(s.exec(q.order_by(Model.id)))

    def rounds(self, run_id: str) -> list[Round]:
        with self.session() as s:
            return list(s.exec(select(Round).where(Round.run_id == run_id).order_by(Round.index)))
