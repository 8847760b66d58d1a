"""Final-answer extraction and normalization, shared by the demo corpus, curation and evaluation.

One normalizer everywhere is the point: a student is scored by exactly the rule that decided which
teacher rows it was trained on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# The marker from its word "answer" on; ANSWER_MARKER adds the optional "final" before it, and
# answer_markers() tries this part alone where it finds that word. ANSWER_MARKER_PATTERN is
# the whole marker as text, for the curation filter's Polars regex (same syntax there).
_FROM_ANSWER = r"answer\s*(?:is)?\s*[:=]\s*"
ANSWER_MARKER_PATTERN = r"(?:final\s+)?" + _FROM_ANSWER
ANSWER_MARKER = re.compile(ANSWER_MARKER_PATTERN, re.IGNORECASE)
_MARKER_FROM_ANSWER = re.compile(_FROM_ANSWER, re.IGNORECASE)
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")
_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
).split()
NUMBER_WORDS = {w: str(i) for i, w in enumerate(_WORDS)}
_LEADING_NOISE = re.compile(r"^(?:the|a|an|about|approximately|exactly|total(?:\s+of)?)\s+")


def answer_markers(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each ANSWER_MARKER match in `text`, in order: what
    `ANSWER_MARKER.finditer(text)` finds, found faster. Every teacher reply is parsed in the
    generate stage's request loop, and a case-insensitive pattern that may start with "final" or
    "answer" gives `re` no literal to skip ahead to, so it tried a match at every character: 2.5
    against 0.7 us for a 90-character demo reply (tests/test_answers.py checks they agree). Here
    str.find jumps to each "answer" in the lowered text and the pattern is tried only there. Only
    for ASCII text: there lower() keeps every position and folds case exactly as re's IGNORECASE
    does (which also matches "ſ" to "s" and the Kelvin sign to "k")."""
    if not text.isascii():
        for m in ANSWER_MARKER.finditer(text):
            yield m.start(), m.end()
        return
    lowered = text.lower()
    at = lowered.find("answer")
    while at >= 0:
        m = _MARKER_FROM_ANSWER.match(text, at)
        if m is None:
            at = lowered.find("answer", at + 1)
            continue
        space = at  # "final", then at least one space, then "answer": the match starts at "final"
        while space and text[space - 1].isspace():
            space -= 1
        final = space < at and lowered.endswith("final", 0, space)
        yield (space - 5 if final else at), m.end()
        at = lowered.find("answer", m.end())


def extract_answer(text: str | None) -> str | None:
    """The text after the last 'Answer:' marker, up to the end of its line; None if absent."""
    if not text:
        return None
    ends = [end for _start, end in answer_markers(text)]
    if not ends:
        return None
    rest = text[ends[-1]:].strip()
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
