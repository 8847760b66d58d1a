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
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class SpecError(ValueError):
    """A curriculum that cannot run; the message names the file and the key path."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# -- corpus ---------------------------------------------------------------------------------
class Columns(Strict):
    """Maps stairs' roles to the corpus file's column names."""

    passage: str = Field("passage", description="Column with the text the question is about.")
    question: str | None = Field("question", description="Column with the question, if any.")
    answer: str | None = Field("answer", description="Column with the gold answer, if any.")


class DemoSpec(Strict):
    """The built-in open-book reasoning corpus about fictional people (flows/corpus/demo.py)."""

    rows: int = Field(600, ge=1, le=1_000_000)
    seed: int = 0
    people: int = Field(2, ge=1, le=12, description="People per passage (the others distract).")
    colors: int = Field(2, ge=1, le=6, description="Facts per person.")
    max_count: int = Field(9, ge=1, le=1000)
    tasks: list[Literal["lookup", "sum", "difference", "compare", "total", "count", "most"]] = (
        Field(default_factory=lambda: ["sum"], min_length=1))


class CorpusSpec(Strict):
    path: Path | None = Field(None, description="Corpus file or saved dataset folder.")
    format: Literal["jsonl", "csv", "parquet", "text", "hf", "demo"] = "jsonl"
    columns: Columns = Field(default_factory=Columns)
    eval_fraction: float = Field(0.2, ge=0.0, lt=1.0,
                                 description="Share held out for evaluation, chosen by row id.")
    eval_max_rows: int | None = Field(None, ge=1, description="Cap on the held-out rows.")
    min_chars: int = Field(1, ge=1)
    max_chars: int = Field(100_000, ge=1, description="Longer passages are rejected.")
    demo: DemoSpec | None = None

    @model_validator(mode="after")
    def _source(self):
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
class TeacherSpec(Strict):
    backend: Literal["openai", "vllm", "llamacpp", "transformers"] = "llamacpp"
    model: str = Field("smollm2-135m", description="Model name, GGUF path, or catalog model id.")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint (backend openai).")
    api_key_env: str | None = Field(
        None, description="Name of the environment variable holding the API key (never the key).")


# -- generate -----------------------------------------------------------------------------------
class GenerateSpec(Strict):
    template: str = Field("rationale", description="Prompt template name in prompts/.")


# -- curation -----------------------------------------------------------------------------------
class CurationSpec(Strict):
    pass


# -- student ------------------------------------------------------------------------------------
class StudentSpec(Strict):
    pass


# -- quantization -------------------------------------------------------------------------------
class QuantizationSpec(Strict):
    """What the quantize stage makes from each round's student, and how each file is measured.
    The defaults make every artifact of the results table: F16 GGUF, five llama.cpp k-quants,
    int8 absmax per channel and int4 groups of 32."""

    # llama.cpp types that need no importance matrix (the IQ2/IQ3/IQ1 ones do).
    GGUF_QUANT_TYPES: ClassVar[tuple[str, ...]] = (
        "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_0", "Q4_1", "Q3_K_M",
        "Q3_K_S", "Q3_K_L", "Q2_K", "IQ4_NL", "IQ4_XS")

    gguf_float: Literal["F16", "F32"] = Field(
        "F16", description="Float type of the exported GGUF that llama.cpp then quantizes.")
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
    gptq_bits: Literal[2, 3, 4, 8] | None = Field(
        None, description="GPTQ through gptqmodel (the 'gptq' extra, CUDA only); null to skip.")
    gptq_group_size: int = Field(128, ge=-1, description="GPTQ group size (-1: per channel).")
    gptq_calibration_rows: int = Field(
        128, ge=1, description="Training-corpus rows used as GPTQ calibration text.")
    eval_rows: int = Field(100, ge=1, description="Held-out rows each artifact is scored on.")
    max_new_tokens: int = Field(128, ge=1, description="Generation budget per eval answer.")
    speed_tokens: int = Field(64, ge=2, description="Tokens generated to time decode speed.")
    # On a shared 2-core machine, llama.cpp's spinning threads collapse when oversubscribed:
    # measured 15 tokens/s with 1 thread against 1 token/s with 2 under a load of 10.
    threads: int | None = Field(1, ge=1, description="CPU threads for llama.cpp and torch while "
                                                     "measuring (null: all cores).")

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
class StaircaseSpec(Strict):
    rounds: int = Field(1, ge=1, le=20)


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
        return self.model_dump_json()

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


def load(path: Path | str) -> Curriculum:
    """Parse and validate a curriculum file, then check what it points to exists."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{path}: cannot read: {e.strerror}") from None
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
    problems = check_references(spec)
    if problems:
        raise SpecError(f"{path}: " + "; ".join(problems))
    return spec


def check_references(spec: Curriculum) -> list[str]:
    """Files and templates the spec names must exist before anything runs."""
    problems = []
    corpus = spec.corpus
    if corpus.path is not None and not spec.resolve(corpus.path).exists():
        problems.append(f"corpus.path: file not found: {spec.resolve(corpus.path)}")
    from flows import checks

    problems.extend(checks.run_all(spec))
    return problems
