"""What each stage returns: typed results, read by the staircase, the CLI, the report and the
Prefect artifacts. Each is built from the stage's summary (the JSON the catalog stores on the
stage row), so a reused stage returns the same type as one that just ran.

Unknown keys in a stored summary (from an older version) are ignored; a test checks that every
key a stage writes today is a field here.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class StageResult(BaseModel):
    model_config = ConfigDict(extra="ignore")
    stage: ClassVar[str] = ""

    run_id: str | None = None
    round: int | None = None
    reused_stage: int | None = Field(None, description="The stage whose work was reused, if any.")

    @classmethod
    def of(cls, run_id: str, summary: dict, **extra):
        return cls.model_validate({**summary, **extra, "run_id": run_id})

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


class IngestResult(StageResult):
    stage: ClassVar[str] = "ingest"
    rows_read: int = 0
    train_rows: int = 0
    eval_rows: int = 0
    rejected: int = 0
    rejects_by_reason: dict[str, int] = {}
    rows_by_level: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Demo levels: {level: {train, eval}} rows.")


class GenerateResult(StageResult):
    stage: ClassVar[str] = "generate"
    template: str | None = None
    template_hash: str | None = None
    teacher: str | None = None
    samples: int = 1
    source_rows: int = 0
    requests: int = 0
    resumed_requests: int = 0
    resumed_shards: int = 0
    rows_written: int = 0
    shards_written: int = 0
    sent: int = 0
    retries: int = 0
    transient_errors: dict[str, int] = {}
    elapsed_s: float = 0.0
    cpu_s: float = 0.0  # CPU time of the whole process (all threads) during the request loop
    concurrency_min: int | None = None
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evicted: int = Field(0, description="Cached answers no row could hold (cached by an "
                               "older version): deleted and asked again.")
    answered: int = 0
    unanswered: int = 0
    errors_by_reason: dict[str, int] = {}
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_prompt_tokens: int = 0
    cached_completion_tokens: int = 0
    prompt_tokens_copied: int = Field(0, description="Prompt tokens of a sample copied from the "
                                      "sample before it (in-process llama.cpp) instead of "
                                      "evaluated again.")
    cost_usd: float | None = None
    budget_exhausted: bool = False
    complete: bool = False
    batches: list[dict] = Field([], description="Per batch: its index, requests, rows, and "
                                "where it ran (host, pid, Dask/Ray worker, endpoint limit held).")
    # A curriculum across rounds (staircase.schedule): the round's problems per level.
    source_rows_by_level: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="{level: {new, replay}} problems asked this round.")
    # Rationalization (schedule entry `rationalize`): unsolved problems asked with the gold
    # answer as a hint; counted apart from the round's samples above.
    rationalize_requests: int = 0
    rationalize_resumed_requests: int = 0
    rationalize_rows_written: int = 0
    rationalize_sent: int = 0
    rationalize_cache_hits: int = 0
    rationalize_answered: int = 0
    rationalize_unanswered: int = 0
    rationalize_prompt_tokens: int = 0
    rationalize_completion_tokens: int = 0
    # Verification (generate.verify): teacher-written questions answered again.
    verify_rows: int = 0  # generated rows the pass asked about
    verify_requests: int = 0
    verify_resumed_requests: int = 0
    verify_answered: int = 0
    verify_unanswered: int = 0
    verify_cache_hits: int = 0
    verify_errors_by_reason: dict[str, int] = {}
    verify_prompt_tokens: int = 0
    verify_completion_tokens: int = 0
    verify_complete: bool | None = None
    # Judge pass (generate.judge): rows graded 1-5.
    judge_rows: int = 0  # generated rows the pass asked about
    judge_requests: int = 0
    judge_resumed_requests: int = 0
    judge_answered: int = 0
    judge_unanswered: int = 0
    judge_cache_hits: int = 0
    judge_errors_by_reason: dict[str, int] = {}
    judge_prompt_tokens: int = 0
    judge_completion_tokens: int = 0
    judge_complete: bool | None = None


class CurateResult(StageResult):
    stage: ClassVar[str] = "curate"
    generated: int = 0
    kept: int = 0
    dropped: int = 0
    drops_by_reason: dict[str, int] = {}
    eval_ngrams: int = 0
    kept_by_stage: dict[str, int] = {}
    mean_confidence: float | None = None
    partitions: list[dict] = Field([], description="Per partition: its index, rows, and where "
                                   "its per-row work ran (host, pid, Dask/Ray worker).")
    kept_by_target: dict[str, int] = Field(default_factory=dict, description="Kept rows by what "
                                           "they train: rationale (question rows) or text.")
    judged: int = Field(0, description="Rows the judge scored.")
    judge_low: int = Field(0, description="Rows dropped for a score under min_judge_score.")
    mean_judge_score: float | None = None
    verified: int = Field(0, description="Teacher-written questions re-answered by the teacher.")
    unverified: int = Field(0, description="Rows dropped: the re-answers' majority disagrees.")
    rationalized: int = Field(0, description="Generated rows written with the gold answer as a "
                              "hint (rationalization).")
    rationalized_kept: int = Field(0, description="Of those, rows kept (trained without the "
                                   "hint).")
    kept_by_level: dict[str, int] = Field(default_factory=dict, description="Demo levels: kept "
                                          "rows by the level of their problem.")


class TrainResult(StageResult):
    stage: ClassVar[str] = "train"
    objective: str | None = None
    rows: int = 0
    rehearsed_rows: int = Field(0, description="Of `rows`, earlier rounds' kept rows trained "
                                "again (staircase.schedule[k].rehearse).")
    examples: int = 0
    skipped: dict[str, int] = {}
    steps: int = 0
    resumed_from: int | None = None
    order: str | None = None
    kd_rows: int = Field(0, description="Rows trained on the teacher's top-k logprobs (kd).")
    teacher_requests: int = Field(0, description="on_policy: scoring requests to the teacher.")
    teacher_tokens: int = Field(0, description="on_policy: tokens the teacher scored (its "
                                "reported prompt tokens).")
    on_policy_samples: int = 0
    misaligned_samples: int = Field(0, description="on_policy: samples whose echoed tokens did "
                                    "not match the student's (left out).")
    stage_runs: list[dict] = Field([], description="Curriculum stage per run of optimizer steps: "
                                   "[{stage, steps: [first, last]}], the order it trained in.")
    first_loss: float | None = None
    final_loss: float | None = None
    loss_terms: dict[str, list[float]] = Field(
        {}, description="Each loss term (ce, kd, label_loss, ...): [first step, last step].")
    train_tokens_per_s: float | None = None
    precision: str | None = Field(None, description="What forward and backward ran in: fp32, or "
                                  "bf16 autocast (student.cpu_bf16 on CPU; always on a GPU).")
    student_model_id: int | None = None
    base_model_id: int | None = None
    base_accuracy: float | None = None
    student_accuracy: float | None = None
    eval_rows: int = 0
    examples_by_target: dict[str, int] = Field(default_factory=dict, description="Training "
                                               "examples by target: rationale, label, text (LM).")


class QuantizedArtifact(BaseModel):
    """One row of the quantization table: a file (or folder) and its measurements."""

    artifact: str
    format: str
    quant: str | None
    engine: str
    size_mb: float
    bits_per_weight: float
    accuracy: float
    perplexity: float
    kl_divergence: float | None = Field(
        None, description="Mean KL(float GGUF || this file) of next-token distributions on the "
        "eval text (nats); None for the float file itself.")
    same_top_token: float | None = Field(
        None, description="Share of eval-text positions where this file and the float GGUF rank "
        "the same token first.")
    tokens_per_s: float
    model_id: int


class QuantizeResult(StageResult):
    stage: ClassVar[str] = "quantize"
    student_id: int | None = None
    student: str | None = None
    student_is_base_stand_in: bool = False
    eval_rows: int = 0
    artifacts: int = 0
    table: list[QuantizedArtifact] = []
    imatrix_tokens: int | None = None
    imatrix_dataset: str | None = None

    def artifact(self, quant: str) -> QuantizedArtifact | None:
        return next((row for row in self.table if row.quant == quant), None)


class ModelEval(BaseModel):
    """One model scored on held-out rows (flows/evaluate)."""

    run_id: str | None = None
    model_id: int | None = None
    format: str
    model: str
    template: str
    template_hash: str | None = None
    few_shot: bool = False
    n: int
    correct: int
    accuracy: float
    generated_tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0
    eval_loss: float | None = None
    perplexity: float | None = None
    loss_rows: int = 0
    predictions: list[dict[str, Any]] = []

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


RESULTS: dict[str, type[StageResult]] = {
    r.stage: r for r in (IngestResult, GenerateResult, CurateResult, TrainResult, QuantizeResult)}
