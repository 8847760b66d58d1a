"""arithmetic_error and unsupported_number on planted rationales (flows/curate/arithmetic.py),
alone and through the curation filters."""

from __future__ import annotations

import polars as pl
import pytest

from flows.curate.arithmetic import arithmetic_errors, evaluate, unsupported_numbers
from flows.curate.filters import FILTERS, drop_reason
from flows.spec import CurationSpec

PASSAGE = "Vorla has 3 red kites and 5 blue kites. Kesi has 1,200 shells."
QUESTION = "How many kites does Vorla have in total?"

CASES = [  # rationale, arithmetic_error, unsupported_number
    ("Vorla has 3 red kites and 5 blue kites. 3 + 5 = 8.", False, False),
    ("3 + 5 = 9. So the answer is 8.", True, False),
    ("3 + 5 = 8. 8 × 2 = 16.", False, True),  # 2 is from nowhere
    ("3 + 5 = 8. 8 - 3 = 5.", False, False),  # 8 is an earlier step's result
    ("8 - 3 = 5. 3 + 5 = 8.", False, True),  # 8 used before any step produced it
    ("3 + 5 + 1,200 = 1,208.", False, False),
    ("3 x 5 = 15 and 5 / 3 = 1.67", False, False),
    ("3 * 5 = 16", True, False),
    ("1,200 ÷ 5 = 240. 240 · 3 = 720.", False, False),
    ("3 + 5 × 2 = 13", False, True),
    ("3 + 5 × 2 = 16", True, True),
    ("There are 3 and 5, so 8 in total.", False, False),  # no step: nothing to check
    ("5 - 7 = -2", False, True),
    ("5 / 0 = 1", True, True),
    # Operands with unit words, as small teachers write them.
    ("3 red kites + 5 blue kites = 8 kites.", False, False),
    ("3 red kites + 5 blue kites = 49 kites, which is 8.", True, False),
    ("3 boxes x 5 = 15", False, False),  # the x of "boxes" is not a times sign
    ("3 red kites + 7 blue kites = 10", False, True),  # 7 is from nowhere
]


@pytest.mark.parametrize("rationale,wrong,unsupported", CASES)
def test_planted_rationales(rationale, wrong, unsupported):
    df = pl.DataFrame({"rationale": [rationale], "passage": [PASSAGE], "question": [QUESTION]})
    assert arithmetic_errors(df).to_list() == [wrong]
    assert unsupported_numbers(df).to_list() == [unsupported]


def test_rounded_results_hold_to_their_own_precision():
    assert evaluate("10 / 3 = 3.33")[0] and evaluate("10 / 3 = 3")[0]
    assert not evaluate("10 / 3 = 3.4")[0]


def _reasons(rows: list[dict], cfg=None) -> list:
    frame = pl.DataFrame(rows, schema={c: pl.String for c in (
        "id", "source_id", "rationale", "answer", "error", "passage", "question", "target")})
    return frame.lazy().select(r=drop_reason(cfg or CurationSpec(), frame.columns, FILTERS)) \
        .collect()["r"].to_list()


def test_curation_names_and_counts_both_checks():
    rows = [{"id": str(i), "source_id": "s", "rationale": r, "answer": "8", "error": None,
             "passage": PASSAGE, "question": QUESTION, "target": None}
            for i, r in enumerate(["Vorla has 3 and 5 kites. 3 + 5 = 8.",
                                   "3 + 5 = 9. So the answer is 8.",
                                   "3 + 5 = 8. 8 × 2 = 16, half of it is 8."])]
    assert _reasons(rows) == [None, "arithmetic_error", "unsupported_number"]
    off = CurationSpec(check_arithmetic=False, check_numbers=False)
    assert _reasons(rows, off) == [None, None, None]
    # A lesson (text row) is not a computation to check.
    lesson = dict(rows[1], id="t", target="text", answer=None)
    assert _reasons([lesson]) == [None]


WORKED = [  # rationale, answer, answer_not_worked
    ("Vorla has 3 red kites and 5 blue kites. 3 + 5 = 8.", "8", False),
    ("Vorla has 8 kites.", "8", True),  # stated, not worked out
    ("3 red kites + 5 blue kites = 8 kites.", "8", False),
    ("Kesi has 1,200 shells.", "1200", False),  # read from the passage: reading is the work
    ("3 + 5 = 8, so Vorla has 8.", "8", False),
    ("The answer is eight.", "eight", True),  # "eight" normalizes to 8: stated all the same
    ("Vorla has kites.", "red", False),  # a non-numeric answer: nothing to compute
]


@pytest.mark.parametrize("rationale,answer,unworked", WORKED)
def test_answers_that_are_only_stated(rationale, answer, unworked):
    from flows.curate.answers import normalize_answers
    from flows.curate.arithmetic import unworked_answers

    normalized = normalize_answers(pl.Series([answer]))
    df = pl.DataFrame({"rationale": [rationale], "passage": [PASSAGE], "question": [QUESTION],
                       "answer": normalized})
    assert unworked_answers(df).to_list() == [unworked]


def test_worked_answer_applies_to_rationalized_rows_unless_told_otherwise():
    rows = [{"id": str(i), "source_id": str(i), "rationale": r, "answer": "8", "error": None,
             "passage": PASSAGE, "question": QUESTION, "target": None, "template": t}
            for i, (r, t) in enumerate([("Vorla has 8 kites.", "rationalize"),
                                        ("Vorla has 8 kites.", "rationale"),
                                        ("3 + 5 = 8.", "rationalize")])]

    def reasons(**kw):
        frame = pl.DataFrame(rows, schema={c: pl.String for c in rows[0]})
        return frame.lazy().select(r=drop_reason(CurationSpec(**kw), frame.columns, FILTERS)) \
            .collect()["r"].to_list()

    assert reasons() == ["answer_not_worked", None, None]
    assert reasons(worked_answer="always") == ["answer_not_worked", "answer_not_worked", None]
    assert reasons(worked_answer="never") == [None, None, None]


def test_the_per_question_cap_keeps_own_samples_first_then_the_most_agreeing():
    from flows.curate.consistency import cap

    df = pl.DataFrame({
        "id": ["a", "b", "c", "d", "e", "f"],
        "source_id": ["p", "p", "p", "q", "q", "r"],
        "question": ["Q", "Q", "Q", "Q", "Q", "Q"],
        "template": ["rationalize", "rationale", "rationale", "rationale", "rationale",
                     "rationalize"],
        "confidence": [1.0, 0.5, 0.75, 1.0, 1.0, 1.0],
        "drop_reason": [None, None, None, "duplicate", None, None]})
    out = cap(df, 1)
    assert out["drop_reason"].to_list() == ["extra_sample", "extra_sample", None, "duplicate",
                                            None, None]
    assert cap(df, 2)["drop_reason"].to_list() == ["extra_sample", None, None, "duplicate",
                                                   None, None]


@pytest.mark.parametrize("passage,rationale,unsupported", [
    # GSM8K writes numbers as words; a right solution computes with them in digits.
    ("She eats three for breakfast and bakes with four. She lays 16 eggs.",
     "16 - 3 - 4 = 9 eggs.", False),
    ("A robe takes 2 bolts of blue fiber and half that much white fiber.", "2 / 2 = 1. 2 + 1 = 3.",
     False),
    ("He walks Twice a day for 30 minutes.", "30 x 2 = 60", False),
    ("Three dozen eggs cost $6.", "3 x 12 = 36. 6 / 36 = 0.17", False),
    # A number neither written nor spelled out is still from nowhere.
    ("She eats three eggs.", "3 x 7 = 21", True),
    ("Someone who wrote none of it.", "1 + 1 = 2", True),
])
def test_numbers_written_as_words_support_a_step(passage, rationale, unsupported):
    df = pl.DataFrame({"rationale": [rationale], "passage": [passage], "question": [None]},
                      schema={c: pl.String for c in ("rationale", "passage", "question")})
    assert unsupported_numbers(df).to_list() == [unsupported]
