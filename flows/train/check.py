"""Pre-flight check (flows/preflight.py) of the student section: the base (and kd teacher) must
resolve to something loadable, and a logit-KD teacher must share the student's vocabulary,
before any row is generated."""

from __future__ import annotations

from flows.models import ModelRefError, curriculum_ref, resolve, vocabulary


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
    elif s.kd_teacher and not problems and not any(
            r.startswith("catalog:") for r in (s.base, s.kd_teacher)):
        problems += _same_vocabulary(spec, s.base, s.kd_teacher)
    return problems


def _same_vocabulary(spec, base: str, teacher: str) -> list[str]:
    """Logit KD compares the two models' next-token distributions id by id: a teacher with
    another tokenizer would be compared on meaningless pairs, so it is refused here."""
    student_vocab = vocabulary(curriculum_ref(spec, base))
    teacher_vocab = vocabulary(curriculum_ref(spec, teacher))
    if student_vocab == teacher_vocab:
        return []
    first = next((i for i, (a, b) in enumerate(zip(student_vocab, teacher_vocab)) if a != b),
                 min(len(student_vocab), len(teacher_vocab)))
    at = (f"token {first} is {teacher_vocab[first]!r} vs {student_vocab[first]!r}"
          if first < min(len(student_vocab), len(teacher_vocab)) else "one extends the other")
    return [f"student.kd_teacher: {teacher!r} has a {len(teacher_vocab)}-token vocabulary and "
            f"student.base {base!r} a {len(student_vocab)}-token one ({at}); logit KD compares "
            "next-token distributions id by id, so the teacher must share the student's "
            "tokenizer"]
