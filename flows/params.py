"""Typed flow parameters: one pydantic model per flow, so the Prefect UI shows a form with
descriptions, defaults and validation, and the CLI builds the very same object.

Validation happens in two places, on purpose:
- The JSON schema of these models (types, the `.yaml` pattern, bounds on `rounds`) is enforced by
  the Prefect server itself when a run is created from a deployment, so a malformed request is
  refused with HTTP 409 and the schema's message before any worker picks it up.
- The `curriculum` validator loads the file with `flows.preflight.load_checked` (keys, types,
  then every stage's pre-flight check: referenced files, templates, models). That needs the project's files, so it runs where the flow runs: a bad
  curriculum fails the flow run at once, with the spec's message in its state.

Every stage flow takes `StageParams`; the staircase takes `StaircaseParams`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from flows.settings import PROJECT_ROOT

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


class FlowParams(BaseModel):
    """Common base: unknown keys are errors, like the curriculum itself."""

    model_config = ConfigDict(extra="forbid")

    curriculum: str = Field(..., description=CURRICULUM_HELP, pattern=r"\.ya?ml$",
                            json_schema_extra={"examples": ["curricula/quickstart.yaml"]})
    _spec = PrivateAttr(default=None)

    @field_validator("curriculum")
    @classmethod
    def _loads(cls, value: str) -> str:
        from flows.preflight import load_checked
        from flows.spec import SpecError

        try:
            load_checked(resolve_curriculum(value))
        except SpecError as e:
            raise ValueError(str(e)) from None
        return value

    def load(self):
        """The parsed curriculum (loaded once per params object; the validator above has already
        run its pre-flight checks)."""
        if self._spec is None:
            from flows.spec import load

            self._spec = load(resolve_curriculum(self.curriculum))
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

    def load(self):
        spec = super().load()
        if self.rounds is not None and spec.staircase.rounds != self.rounds:
            # validate_assignment on the spec re-checks the bounds; the run records this spec.
            spec.staircase.rounds = self.rounds
        return spec


class RoundParams(StageParams):
    """Run one stage of one staircase round."""

    round_index: int = Field(0, ge=0, le=19, description="Staircase round (0 = the first).")


class EvalParams(FlowParams):
    """Score any model on a curriculum's held-out rows."""

    model: str = Field(..., description="'smollm2-135m', a model folder, a .gguf file, or "
                                        "catalog:<id> (see `stairs show RUN`).")
    rows: Optional[int] = Field(None, ge=1, description="Score only the first N held-out rows "
                                                         "(default: student.eval_rows).")
