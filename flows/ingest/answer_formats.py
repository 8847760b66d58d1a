"""Gold answers stored in a set's own shape, turned into the one answer string curation and
evaluation compare against (flows/answers.py normalizes it further)."""

from __future__ import annotations

import re

FINAL = re.compile(r"####\s*(.+?)\s*$")
CALCULATOR = re.compile(r"<<[^>]*>>")


def gsm8k_answer(solution: str) -> tuple[str | None, str]:
    """GSM8K's `answer` column: a worked solution whose last line is "#### N". Returns N (None
    when the line is missing) and the solution without it and without the calculator marks
    (`<<16-3-4=9>>`), which is a reference rationale, never a target shown to a teacher."""
    final = FINAL.search(solution)
    rationale = CALCULATOR.sub("", FINAL.sub("", solution)).strip()
    return (final.group(1) if final else None), rationale


def drop_spans(value) -> str | None:
    """DROP's answer spans, as Hugging Face's `answers_spans` ({"spans": [...], ...}) or a plain
    list of spans: joined by ", " (a multi-span answer is one answer). None when empty."""
    if isinstance(value, dict):
        value = value.get("spans")
    if isinstance(value, str):
        return value
    if not isinstance(value, (list, tuple)):
        return None
    spans = [str(s) for s in value if s is not None and str(s).strip()]
    return ", ".join(spans) or None
