"""Final-answer extraction and normalization, shared by the demo corpus, curation and evaluation.

One normalizer everywhere is the point: a student is scored by exactly the rule that decided which
teacher rows it was trained on.
"""

from __future__ import annotations

import re

ANSWER_MARKER = re.compile(r"(?:final\s+)?answer\s*(?:is)?\s*[:=]\s*", re.IGNORECASE)
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
NUMBER_WORDS = {w: str(i) for i, w in enumerate(_WORDS)}
_LEADING_NOISE = re.compile(r"^(?:the|a|an|about|approximately|exactly|total(?:\s+of)?)\s+")


def extract_answer(text: str | None) -> str | None:
    """The text after the last 'Answer:' marker, up to the end of its line; None if absent."""
    if not text:
        return None
    matches = list(ANSWER_MARKER.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end():].strip()
    line = rest.splitlines()[0].strip() if rest else ""
    return line or None


def normalize_answer(answer: str | None) -> str:
    """Canonical form: a number as its shortest decimal (units, commas, currency dropped),
    anything else lowercased with punctuation and articles stripped."""
    if answer is None:
        return ""
    s = answer.strip().lower().strip(" .!*\"'`")
    s = _LEADING_NOISE.sub("", s)
    s = s.replace("$", "").replace("€", "").replace("£", "")
    lead = _leading_number(s)
    # A number with words after it ("7 lanterns") is that number; one followed by another number
    # ("18 to 24", DROP's age ranges) is a phrase: reading it as 18 would match a wrong "18".
    if lead is not None and not _has_number(s[lead[1]:]):
        return lead[0]
    s = re.sub(r"[^\w\s-]", "", s)
    return re.sub(r"\s+", " ", s).strip()


def _leading_number(s: str) -> tuple[str, int] | None:
    """The number `s` starts with, canonical, and where it ends: a number word ("seven") or
    digits ("1,200"); None when it starts with neither."""
    first = s.split()[0] if s.split() else ""
    if first in NUMBER_WORDS:
        return NUMBER_WORDS[first], len(first)
    m = NUMBER.match(s)
    return (_canonical_number(m.group()), m.end()) if m else None


def _has_number(text: str) -> bool:
    return any(ch.isdigit() for ch in text) or any(w in NUMBER_WORDS for w in text.split())


def is_number(answer: str | None) -> bool:
    """True when the answer is one number, with at most a short unit after it ("17,000", "$5",
    "67.8%", "seven", "58-yard", "65 years of age"): the test for a numeric question. Stricter than
    normalize_answer, which also reads "the 2016 election" or "49ers" as a number."""
    if answer is None:
        return False
    s = answer.strip().lower().strip(" .!*\"'`").replace("$", "")
    lead = _leading_number(s)
    if lead is None:
        return False
    unit = s[lead[1]:]
    if unit and unit[0] not in " %-":
        return False  # "49ers"
    return not _has_number(unit) and "," not in unit and len(re.findall(r"[a-z]+", unit)) <= 3


def _canonical_number(token: str) -> str:
    value = float(token.replace(",", ""))
    return str(int(value)) if value.is_integer() else repr(value)


def answers_match(predicted: str | None, gold: str | None) -> bool:
    p, g = normalize_answer(predicted), normalize_answer(gold)
    return bool(p) and p == g
