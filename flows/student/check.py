"""`stairs validate` pre-flight for the student stage: the base (and kd teacher) must resolve to
something loadable before any row is generated, and the objective must have what it needs."""

from __future__ import annotations

from flows import checks
from flows.student.base import ModelRefError, resolve


@checks.register
def check_student(spec) -> list[str]:
    s = spec.student
    problems = []
    for key, ref in (("student.base", s.base), ("student.kd_teacher", s.kd_teacher)):
        if ref is None or ref.startswith("catalog:"):
            continue  # catalog models exist only once a run made them
        try:
            from flows.train import model_ref

            resolve(model_ref(spec, ref))
        except (ModelRefError, FileNotFoundError) as e:
            problems.append(f"{key}: {e}")
    if s.kd_teacher and s.objective != "kd":
        problems.append("student.kd_teacher: only used by objective 'kd'")
    return problems
