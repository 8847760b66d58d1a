"""Typed flow parameters: one pydantic model per flow, so the Prefect UI shows a form with
descriptions, defaults and validation, and the CLI builds the very same object.

Validation happens in two places, on purpose:
- The JSON schema of these models (types, the `.yaml` pattern, bounds on `rounds` and on every
  override) is enforced by the Prefect server itself when a run is created from a deployment, so
  a malformed request is refused with HTTP 409 and the schema's message before any worker picks
  it up.
- The model validator loads the curriculum, applies the overrides and runs every pre-flight check
  (`flows.preflight.require`: keys, types, cross-key rules, referenced files, templates, models).
  That needs the project's files, so it runs where the flow runs: a bad curriculum or override
  fails the flow run at once, with the spec's message in its state.

Every flow takes `overrides`: optional values for the curriculum's main knobs (teacher, template,
rows, sampling, student), so a run from the UI can try another teacher or template without
editing YAML on the worker's disk. The run records the spec with the overrides applied
(Run.spec_json), so what ran is in the catalog.

Every stage flow takes `StageParams`; the staircase takes `StaircaseParams`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, model_validator

from flows.settings import PROJECT_ROOT
from flows.spec import GenerateSpec, StudentSpec, TeacherSpec

CURRICULUM_HELP = (
    "Curriculum YAML file: a path relative to the project root (e.g. curricula/quickstart.yaml) "
    "or an absolute path. It is checked with `stairs validate` rules before anything runs.")


def resolve_curriculum(path: str) -> Path:
    """An absolute path stays; a relative one is looked up from the working directory first
    (what a CLI user means), then from the project root (where deployments run)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    for base in (Path.cwd(), PROJECT_ROOT):
        if (base / p).is_file():
            return (base / p).resolve()
    return (Path.cwd() / p).resolve()


# Form field -> the curriculum key it overrides. Types, bounds and help come from that key's
# own definition in flows/spec.py, so the form refuses exactly what the YAML would.
KNOBS: dict[str, tuple[type[BaseModel], str]] = {
    "teacher_backend": (TeacherSpec, "teacher.backend"),
    "teacher_model": (TeacherSpec, "teacher.model"),
    "teacher_base_url": (TeacherSpec, "teacher.base_url"),
    "template": (GenerateSpec, "generate.template"),
    "max_rows": (GenerateSpec, "generate.max_rows"),
    "temperature": (TeacherSpec, "teacher.temperature"),
    "samples": (TeacherSpec, "teacher.samples"),
    "max_tokens": (TeacherSpec, "teacher.max_tokens"),
    "student_objective": (StudentSpec, "student.objective"),
    "student_max_steps": (StudentSpec, "student.max_steps"),
}


# An override sets one value of the key's type; teacher.base_url also takes a list of replicas,
# which the form's one text field does not: an override names one endpoint.
ONE_VALUE = {"teacher.base_url": str}


def _knob(model: type[BaseModel], key: str):
    field = model.model_fields[key.rsplit(".", 1)[1]]
    annotation = ONE_VALUE.get(key, field.annotation)
    kind = Annotated[annotation, *field.metadata] if field.metadata else annotation
    help_ = f"Override {key}" + (f": {field.description}" if field.description else ".")
    return Optional[kind], Field(None, description=help_)


class _OverridesBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def changes(self) -> dict[str, Any]:
        """{curriculum key: value} for the fields that are set."""
        return {KNOBS[name][1]: value for name, value in self.model_dump().items()
                if value is not None}


Overrides = create_model(
    "Overrides", __base__=_OverridesBase,
    __doc__="Optional values for the curriculum's main knobs; empty fields keep the YAML's.",
    **{name: _knob(model, key) for name, (model, key) in KNOBS.items()})


class FlowParams(BaseModel):
    """Common base: unknown keys are errors, like the curriculum itself."""

    model_config = ConfigDict(extra="forbid")

    curriculum: str = Field(..., description=CURRICULUM_HELP, pattern=r"\.ya?ml$",
                            json_schema_extra={"examples": ["curricula/quickstart.yaml"]})
    overrides: Overrides = Field(
        default_factory=Overrides,
        description="Try another teacher, template, row count, sampling or student setting "
                    "for this run only; the run records the curriculum with them applied.")
    _spec = PrivateAttr(default=None)

    def changes(self) -> dict[str, Any]:
        return self.overrides.changes()

    @model_validator(mode="after")
    def _checked(self):
        from flows.preflight import require
        from flows.spec import SpecError, load, with_changes

        try:
            self._spec = require(with_changes(load(resolve_curriculum(self.curriculum)),
                                              self.changes()))
        except SpecError as e:
            raise ValueError(str(e)) from None
        return self

    def load(self):
        """The parsed curriculum with the overrides applied; the validator above has already
        run its pre-flight checks."""
        return self._spec


class StageParams(FlowParams):
    """Run one stage of a curriculum, on its own or inside an existing run."""

    run_id: Optional[str] = Field(
        None, description="Add this stage to an existing run (see `stairs runs`); "
                          "empty starts a new run of its own.",
        pattern=r"^[A-Za-z0-9_.-]+$")


class StaircaseParams(FlowParams):
    """Run the whole staircase a curriculum describes."""

    new: bool = Field(False, description="Start a fresh run instead of resuming the newest "
                                         "unfinished run of the same curriculum.")
    rounds: Optional[int] = Field(None, ge=1, le=20,
                                  description="Override staircase.rounds from the curriculum.")

    def changes(self) -> dict[str, Any]:
        extra = {} if self.rounds is None else {"staircase.rounds": self.rounds}
        return {**super().changes(), **extra}


class RoundParams(StageParams):
    """Run one stage of one staircase round."""

    round_index: int = Field(0, ge=0, le=19, description="Staircase round (0 = the first).")


class EvalParams(FlowParams):
    """Score any model on a curriculum's held-out rows."""

    model: str = Field(..., description="'smollm2-135m', a model folder, a .gguf file, or "
                                        "catalog:<id> (see `stairs show RUN`).")
    rows: Optional[int] = Field(None, ge=1, description="Score only the first N held-out rows "
                                "(default: student.eval_rows, or quantization.eval_rows where "
                                "student.eval_rows is 0).")
    as_teacher: bool = Field(False, description="Ask as the staircase scores a teacher: with the "
                             "template's worked examples (teacher.few_shot) and "
                             "quantization.max_new_tokens, instead of as a student.")


class PreviewParams(FlowParams):
    """Ask the teacher about a few corpus rows and show what curation would keep."""

    n: int = Field(8, ge=1, le=1000, description="How many corpus rows (the first train rows, "
                                                 "the ones generate starts with).")
