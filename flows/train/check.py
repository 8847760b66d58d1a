"""Pre-flight check (flows/preflight.py) of the student section: the base (and kd teacher) must
resolve to something loadable before any row is generated."""

from __future__ import annotations

from flows.models import ModelRefError, curriculum_ref, resolve


def check_student(spec) -> list[str]:
    s = spec.student
    problems = []
    for key, ref in (("student.base", s.base), ("student.kd_teacher", s.kd_teacher)):
        if ref is None or ref.startswith("catalog:"):
            continue  # catalog models exist only once a run made them
        try:
            resolve(curriculum_ref(spec, ref))
        except (ModelRefError, FileNotFoundError) as e:
            problems.append(f"{key}: {e}")
    if s.kd_teacher and s.objective != "kd":
        problems.append("student.kd_teacher: only used by objective 'kd'")
    return problems
