"""Pre-flight checks that stages register for `stairs validate`: each takes the curriculum and
returns problems as 'key.path: why' strings. A stage adds its own check here (templates exist and
render, models exist, ...) so that a broken curriculum fails before any request or training step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from flows.spec import Curriculum

Check = Callable[["Curriculum"], list[str]]
_CHECKS: list[Check] = []


def register(check: Check) -> Check:
    _CHECKS.append(check)
    return check


def run_all(spec: "Curriculum") -> list[str]:
    _load_stage_checks()
    problems: list[str] = []
    for check in _CHECKS:
        problems.extend(check(spec))
    return problems


def _load_stage_checks() -> None:
    # Stage modules register their checks on import; importing them here keeps `validate` complete
    # without spec.py knowing each stage.
    import importlib

    for module in STAGE_CHECK_MODULES:
        importlib.import_module(module)


STAGE_CHECK_MODULES: list[str] = [
    "flows.prompting.check", "flows.teachers.check", "flows.curate", "flows.student.check",
    "flows.quant.checks",
]
