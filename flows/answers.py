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
    first = s.split()[0] if s.split() else ""
    if first in NUMBER_WORDS:
        return NUMBER_WORDS[first]
    m = NUMBER.match(s)
    if m:
        return _canonical_number(m.group())
    s = re.sub(r"[^\w\s-]", "", s)
    return re.sub(r"\s+", " ", s).strip()


def _canonical_number(token: str) -> str:
    value = float(token.replace(",", ""))
    return str(int(value)) if value.is_integer() else repr(value)


def answers_match(predicted: str | None, gold: str | None) -> bool:
    p, g = normalize_answer(predicted), normalize_answer(gold)
    return bool(p) and p == g
