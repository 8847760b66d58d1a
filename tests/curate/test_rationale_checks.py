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
