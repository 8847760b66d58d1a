"""Parsers for teacher replies, one per template output kind.

Each takes the raw reply text (and the backend's finish_reason when known) and returns a list of
items, every item a dict with the keys facts, question, rationale, answer (None when absent) and
error: None, or a named reason ("empty", "refused", "no_answer", "truncated", "parse_error").
A bad reply is never an exception: it is an item with an error, so the generate flow keeps and
counts it.

Kinds:
- rationale: step-by-step text ending with 'Answer: ...' -> one item (rationale, answer).
- disentangle: facts of a passage plus several question/reasoning/answer blocks, as JSON (when
  the backend enforced the template's json_schema) or as labelled text -> one item per question.
- textbook: a lesson rewritten from the passage -> one item, the lesson in `rationale`.
- judge: a grade of a generated row -> one item, the reason in `rationale`, the score (1-5) as
  text in `answer`.
"""

from __future__ import annotations

import json
import re
from typing import Callable

from flows.answers import answer_markers

Parser = Callable[[str | None, str | None], list[dict]]

# Refusals are only called refusals when no answer was found: "I cannot be sure, but..." followed
# by an answer is a usable reply.
REFUSAL = re.compile(
    r"^\W*(?:i(?:'m| am)\s+sorry|sorry,|i\s+(?:cannot|can't|can not|won't|am unable|'m unable)|"
    r"as an ai\b|i\s+do(?:n't| not)\s+(?:have|know))", re.IGNORECASE)


def item(*, facts=None, question=None, rationale=None, answer=None, error=None) -> dict:
    return {"facts": facts, "question": question, "rationale": rationale, "answer": answer,
            "error": error}


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return text or None


def _failure(text: str, finish_reason: str | None) -> str:
    """Why a non-empty reply has no usable answer."""
    if REFUSAL.match(text):
        return "refused"
    if finish_reason == "length":
        return "truncated"
    return "no_answer"


def split_answer(text: str) -> tuple[str | None, str | None, bool]:
    """(reasoning before the first 'Answer:', the answer line, whether that line ended the text).

    The first complete answer is the teacher's answer: small models often go on after it with a
    new made-up problem, and that tail must not leak into the rationale or the answer.
    """
    for start, end in answer_markers(text):
        line, newline, _ = text[end:].partition("\n")
        line = line.strip().strip("*").strip()
        if line:
            return _clean(text[:start]), line, not newline
    return None, None, False


def parse_rationale(text: str | None, finish_reason: str | None = None) -> list[dict]:
    if not text or not text.strip():
        return [item(error="empty")]
    reasoning, answer, at_end = split_answer(text)
    if answer is None:
        return [item(rationale=_clean(text), error=_failure(text, finish_reason))]
    # An answer on the very last line of a reply cut by max_tokens may itself be cut ("1" of "12").
    error = "truncated" if at_end and finish_reason == "length" else None
    return [item(rationale=reasoning, answer=answer, error=error)]


def parse_textbook(text: str | None, finish_reason: str | None = None) -> list[dict]:
    lesson = _clean(text)
    if lesson is None:
        return [item(error="empty")]
    if REFUSAL.match(lesson) and len(lesson) < 300:
        return [item(rationale=lesson, error="refused")]
    return [item(rationale=lesson, error="truncated" if finish_reason == "length" else None)]


# -- disentangle ---------------------------------------------------------------------------------
_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)
_QUESTION = re.compile(r"^\W*question\s*\d*\s*[:.)-]\s*", re.IGNORECASE | re.MULTILINE)
_REASONING = re.compile(r"^\W*(?:reasoning|rationale|solution|explanation|steps?)\s*:\s*",
                        re.IGNORECASE | re.MULTILINE)
_FACTS = re.compile(r"^\W*facts\s*:\s*", re.IGNORECASE | re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def _json_object(text: str) -> dict | None:
    body = _FENCE.sub("", text.strip())
    if not body.startswith("{"):
        return None
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _facts_text(facts) -> str | None:
    if isinstance(facts, list):
        lines = [str(f).strip() for f in facts if str(f).strip()]
        return "\n".join(f"- {f}" for f in lines) or None
    return _clean(facts if isinstance(facts, str) else None)


def _disentangle_json(obj: dict) -> list[dict]:
    facts = _facts_text(obj.get("facts"))
    questions = obj.get("questions")
    if not isinstance(questions, list) or not questions:
        return [item(facts=facts, error="parse_error")]
    items = []
    for q in questions:
        if not isinstance(q, dict) or not _clean(str(q.get("question") or "")):
            items.append(item(facts=facts, error="parse_error"))
            continue
        answer = _clean(str(q["answer"])) if q.get("answer") is not None else None
        items.append(item(facts=facts, question=_clean(str(q["question"])),
                          rationale=_clean(str(q.get("rationale") or "")), answer=answer,
                          error=None if answer else "no_answer"))
    return items


def _disentangle_text(text: str, finish_reason: str | None) -> list[dict]:
    blocks = _QUESTION.split(text)
    head, questions = blocks[0], blocks[1:]
    facts_match = _FACTS.search(head)
    facts = None
    if facts_match:
        lines = [_BULLET.sub("", ln).strip() for ln in head[facts_match.end():].splitlines()]
        facts = _facts_text([ln for ln in lines if ln])
    if not questions:
        if REFUSAL.match(text):
            return [item(facts=facts, error="refused")]
        return [item(facts=facts, error="truncated" if finish_reason == "length"
                     else "parse_error")]
    items = []
    for i, block in enumerate(questions):
        last = i == len(questions) - 1
        parts = _REASONING.split(block, maxsplit=1)
        if len(parts) == 2:
            question, after = parts
            reasoning, answer, at_end = split_answer(after)
            if answer is None:
                reasoning = _clean(after)
        else:
            # No reasoning label: the question is the first line, the rest is reasoning.
            question, _, after = block.partition("\n")
            reasoning, answer, at_end = split_answer(after)
            if answer is None:
                reasoning = _clean(after)
        error = None
        if answer is None:
            error = "truncated" if last and finish_reason == "length" else "no_answer"
        elif last and at_end and finish_reason == "length":
            error = "truncated"
        items.append(item(facts=facts, question=_clean(question), rationale=reasoning,
                          answer=answer, error=error))
    return items


def parse_disentangle(text: str | None, finish_reason: str | None = None) -> list[dict]:
    if not text or not text.strip():
        return [item(error="empty")]
    obj = _json_object(text)
    if obj is not None:
        return _disentangle_json(obj)
    return _disentangle_text(text, finish_reason)


# -- judge -----------------------------------------------------------------------------------------
SCORE_RANGE = (1, 5)
_SCORE = re.compile(r"^\W*score\s*[:=]\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*\d+)?", re.IGNORECASE | re.MULTILINE)
_REASON = re.compile(r"^\W*reason\s*[:=]\s*", re.IGNORECASE | re.MULTILINE)


def parse_judge(text: str | None, finish_reason: str | None = None) -> list[dict]:
    if not text or not text.strip():
        return [item(error="empty")]
    obj = _json_object(text)
    if obj is not None:
        score, reason = obj.get("score"), _clean(str(obj.get("reason") or ""))
    else:
        m = _SCORE.search(text)
        score = m.group(1) if m else None
        r = _REASON.search(text)
        reason = _clean(_SCORE.sub("", text[r.end():]) if r else _SCORE.sub("", text))
    if score is None:
        return [item(rationale=reason, error=_failure(text, finish_reason))]
    try:
        value = float(score)
    except (TypeError, ValueError):
        return [item(rationale=reason, error="parse_error")]
    lo, hi = SCORE_RANGE
    if not value.is_integer() or not lo <= value <= hi:
        return [item(rationale=reason, error="parse_error")]
    return [item(rationale=reason, answer=str(int(value)))]


PARSERS: dict[str, Parser] = {
    "rationale": parse_rationale,
    "disentangle": parse_disentangle,
    "textbook": parse_textbook,
    "judge": parse_judge,
}
