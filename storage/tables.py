"""Catalog tables. Schema changes go through Alembic migrations in storage/migrations.

Lineage is explicit: shards point to the stage that wrote them and to the shards they were made
from (ShardParent); models point to their parent model and to the shards they were trained on
(ModelShard); rounds point to their teacher and student models.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlmodel import Field, SQLModel, UniqueConstraint


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Run(SQLModel, table=True):
    id: str = Field(primary_key=True)
    curriculum: str = Field(index=True)
    curriculum_path: str
    curriculum_hash: str = Field(index=True)
    spec_json: str
    command: str  # the CLI verb or deployment that started it: run, ingest, generate, ...
    status: str = "running"  # running | completed | failed | stopped
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    error: str | None = None


class Round(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("run_id", "index"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    index: int
    teacher: str  # human-readable: backend and model
    teacher_model_id: int | None = Field(default=None, foreign_key="model.id")
    student_model_id: int | None = Field(default=None, foreign_key="model.id")
    promoted_model_id: int | None = Field(default=None, foreign_key="model.id")
    status: str = "running"
    gate_passed: bool | None = None
    gate_reason: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None


class Stage(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    round_index: int | None = None
    name: str = Field(index=True)  # ingest | generate | curate | train | quantize | evaluate
    # Hash of everything the stage's output depends on; a completed stage with the same
    # fingerprint can be reused instead of redone.
    fingerprint: str | None = Field(default=None, index=True)
    # A stage satisfied by an earlier identical one points to it; its shards are that stage's.
    reused_from_id: int | None = Field(default=None, foreign_key="stage.id")
    status: str = "running"
    params_json: str = "{}"
    summary_json: str = "{}"
    prefect_flow_run_id: str | None = None
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    error: str | None = None


class Shard(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    stage_id: int = Field(foreign_key="stage.id", index=True)
    kind: str = Field(index=True)  # corpus | eval | rejects | generated | kept | dropped | train
    path: str  # relative to the shards root, or a URI for remote filesystems
    rows: int
    bytes: int
    checksum: str  # sha256 of the file
    arrow_schema: str
    created_at: datetime = Field(default_factory=utcnow)


class ShardParent(SQLModel, table=True):
    shard_id: int = Field(foreign_key="shard.id", primary_key=True)
    parent_id: int = Field(foreign_key="shard.id", primary_key=True)


class Model(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: str | None = Field(default=None, foreign_key="run.id", index=True)
    stage_id: int | None = Field(default=None, foreign_key="stage.id")
    round_index: int | None = None
    name: str
    kind: str  # base | student | quantized
    format: str  # hf | gguf | int8-absmax | int4 | ...
    quant: str | None = None  # F16, Q8_0, Q4_K_M, ...
    path: str
    bytes: int = 0
    parent_id: int | None = Field(default=None, foreign_key="model.id")
    params_json: str = "{}"
    created_at: datetime = Field(default_factory=utcnow)


class ModelShard(SQLModel, table=True):
    model_id: int = Field(foreign_key="model.id", primary_key=True)
    shard_id: int = Field(foreign_key="shard.id", primary_key=True)


class Metric(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    run_id: str | None = Field(default=None, foreign_key="run.id", index=True)
    stage_id: int | None = Field(default=None, foreign_key="stage.id")
    model_id: int | None = Field(default=None, foreign_key="model.id", index=True)
    round_index: int | None = None
    name: str = Field(index=True)
    value: float
    split: str | None = None
    meta_json: str = "{}"
    created_at: datetime = Field(default_factory=utcnow)


class ResponseCache(SQLModel, table=True):
    """Teacher responses keyed by content (backend, model, rendered messages, sampling params,
    sample index), shared across runs. Never holds an API key."""

    key: str = Field(primary_key=True)
    backend: str
    model: str
    response_json: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: datetime = Field(default_factory=utcnow)


class TemplateText(SQLModel, table=True):
    """The text of every prompt-template version a generate stage used, by content hash (what
    generated rows carry in `template_hash`), so any version can be shown or restored later
    even after its file was edited."""

    content_hash: str = Field(primary_key=True)
    name: str = Field(index=True)
    text: str
    created_at: datetime = Field(default_factory=utcnow)


class RunLock(SQLModel, table=True):
    """Who works in a run right now: one row per run while a process holds it (storage/locks.py).
    The holder renews `heartbeat` every few seconds; a row whose process is gone (same host),
    or whose heartbeat is older than the lease (any host), is stale and may be taken over."""

    run_id: str = Field(primary_key=True)
    token: str  # this acquisition: only its holder renews or deletes the row
    host: str
    pid: int
    process_started: float  # the holder's start time when it took the lock (for reading; liveness
    # compares the pid's start with `heartbeat`, storage/locks.py)
    command: str
    acquired: float  # epoch seconds
    heartbeat: float
