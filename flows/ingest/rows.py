"""Corpus rows: validation with named reject reasons, stable content ids, the eval split."""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from dataclasses import dataclass

import pyarrow as pa

from flows.ingest.answer_formats import drop_spans, gsm8k_answer

CORPUS_SCHEMA = pa.schema([
    ("id", pa.string()), ("passage", pa.string()), ("question", pa.string()),
    ("answer", pa.string()), ("split", pa.string()), ("source", pa.string()),
    ("line", pa.int64()), ("meta", pa.string()),
])
REJECTS_SCHEMA = pa.schema([
    ("source", pa.string()), ("line", pa.int64()), ("reason", pa.string()),
    ("field", pa.string()), ("detail", pa.string()), ("raw", pa.string()),
])
RAW_KEEP = 1000  # chars of the offending row kept in the rejects shard


def normalize_text(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFC", text)).strip()


def content_id(passage: str, question: str | None, answer: str | None) -> str:
    """Same content (up to whitespace and Unicode normalization), same id, in any run."""
    blob = "\x1f".join(normalize_text(x or "") for x in (passage, question, answer))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def split_key(row_id: str, passage: str | None, split_by: str) -> str:
    """What decides a row's side: its id, or (split_by "passage") its passage's hash, so every
    question about one passage is held out together or not at all."""
    return content_id(passage or "", None, None) if split_by == "passage" else row_id


def split_of(key: str, eval_fraction: float) -> str:
    # Keys are uniform hashes, so a threshold on the key is a seeded, stable random split that
    # does not move when rows are added or removed elsewhere in the corpus.
    return "eval" if int(key[:12], 16) / 16**12 < eval_fraction else "train"


def row_split(row_id: str, passage: str | None, corpus) -> str:
    """A row's side under a curriculum's corpus section (its split_by and eval_fraction): what
    ingest writes and what `stairs prompts render` shows, from one place."""
    return split_of(split_key(row_id, passage, corpus.split_by), corpus.eval_fraction)


@dataclass
class Reject(Exception):
    reason: str
    field: str | None = None
    detail: str = ""


def _text_field(record: dict, role: str, column: str | None, *, required: bool) -> str | None:
    if column is None:
        return None
    if column not in record or record[column] is None:
        if required:
            raise Reject("missing_field", column, f"no '{column}' (the {role} column)")
        return None
    value = record[column]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Reject("wrong_type", column, f"expected text, got {type(value).__name__}")
    if isinstance(value, float) and not math.isfinite(value):
        # JSON's NaN/Infinity and overflowing numbers (1e400) are no text to learn from.
        raise Reject("not_a_number", column, f"{value} is not a finite number")
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Reject("invalid_utf8", column, "contains unpaired surrogates") from None
    bad = FORBIDDEN.search(text)
    if bad:
        raise Reject("invalid_text", column, f"contains {_describe(bad.group())} at "
                     f"character {bad.start()}")
    return text


# Control characters other than tab, newline and carriage return (terminal escapes, NUL,
# binary junk), and the bidirectional embedding/override/isolate controls that can make text
# display differently from what a model reads ("Trojan Source"). Rows holding one are
# rejected, not silently edited: an edited row would be a different row with another id.
# Implicit direction marks (U+200E, U+200F, U+061C), which ordinary right-to-left text uses,
# are kept.
FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _describe(ch: str) -> str:
    kind = "bidirectional control" if ch >= "\u202a" else "control character"
    return f"{kind} U+{ord(ch):04X}"


def _answer(record: dict, columns, *, required: bool) -> tuple[str | None, dict]:
    """The gold answer as text, and what else its column held (kept in meta)."""
    fmt, column = columns.answer_format, columns.answer
    if fmt == "drop_spans" and column is not None and record.get(column) is not None:
        answer = drop_spans(record[column])
        if answer is None:
            raise Reject("wrong_type", column, "expected DROP answer spans (a list of text, or "
                         f"{{'spans': [...]}}), got {str(record[column])[:80]}")
        return _text_field({column: answer}, "answer", column, required=required), {}
    answer = _text_field(record, "answer", column, required=required)
    if fmt == "gsm8k" and answer is not None:
        final, rationale = gsm8k_answer(answer)
        if final is None:
            raise Reject("no_final_answer", column, "no '#### <answer>' line in the solution")
        return final, {"reference_rationale": rationale}
    return answer, {}


def validate(record: dict, *, columns, min_chars: int, max_chars: int,
             has_questions: bool) -> dict:
    """Turn one raw record into corpus fields, or raise Reject naming the field and why."""
    passage = _text_field(record, "passage", columns.passage, required=True)
    question = _text_field(record, "question", columns.question, required=has_questions)
    answer, extra = _answer(record, columns, required=has_questions)
    if len(passage.strip()) < min_chars:
        raise Reject("empty_text", columns.passage, f"{len(passage.strip())} chars")
    total = len(passage) + len(question or "") + len(answer or "")
    if total > max_chars:
        raise Reject("too_long", columns.passage, f"{total} chars > max_chars {max_chars}")
    if question is not None and not question.strip():
        raise Reject("empty_text", columns.question, "empty question")
    if answer is not None and not answer.strip():
        raise Reject("empty_text", columns.answer, "empty answer")
    used = {c for c in (columns.passage, columns.question, columns.answer) if c}
    meta = {**{k: v for k, v in record.items() if k not in used}, **extra}
    return {"passage": passage, "question": question, "answer": answer,
            "meta": json.dumps(meta, default=str, ensure_ascii=False)}
