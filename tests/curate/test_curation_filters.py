"""Each curation filter: rows that must pass and rows that must drop, with the named reason."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flows.answers import answers_match, normalize_answer
from flows.curate.answers import normalize_answers
from flows.curate.filters import FILTERS, drop_reason, repeated_ngram_fraction
from flows.spec import CurationSpec
from tests.helpers.curation_fixtures import (
    corpus_rows,
    generated_row,
    good_rationale,
    planted,
    table,
    teacher_rows,
)


def reasons(rows, cfg=None, only: str | None = None) -> list:
    cfg = cfg or CurationSpec()
    lf = pl.from_arrow(table(rows)).lazy()
    chosen = [f for f in FILTERS if only is None or f.reason == only]
    return lf.select(r=drop_reason(cfg, lf.collect_schema().names(), chosen)).collect()["r"].to_list()


SOURCES = corpus_rows(30, seed=3)
GOOD = [r for r in teacher_rows(SOURCES, samples=3, p_correct=1.0, seed=1)]


def test_good_rows_pass_every_filter():
    assert reasons(GOOD) == [None] * len(GOOD)


@pytest.mark.parametrize("reason", list(planted(SOURCES[0])))
def test_planted_row_drops_with_its_reason(reason):
    bad = planted(SOURCES[0])[reason]
    got = reasons(GOOD + [bad])
    assert got[-1] == reason
    assert got[:-1] == [None] * len(GOOD)


@pytest.mark.parametrize("f", [f.reason for f in FILTERS if f.reason != "judge_low"])
def test_each_filter_alone_keeps_good_rows(f):
    assert set(reasons(GOOD, only=f)) == {None}


def test_gold_match_uses_the_shared_normalizer():
    src = SOURCES[0]
    gold = src["answer"]
    words = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
             "7": "seven", "8": "eight", "9": "nine", "10": "ten", "11": "eleven",
             "12": "twelve", "13": "thirteen", "14": "fourteen", "15": "fifteen",
             "16": "sixteen", "17": "seventeen", "18": "eighteen"}
    variants = [f"{gold} lanterns", f"  {gold}.", f"The {gold}", words[gold], f"{gold}.0"]
    rows = [generated_row(src, sample_index=i, answer=v, rationale=f"It adds up to {v}.")
            for i, v in enumerate(variants)]
    assert reasons(rows, only="wrong_answer") == [None] * len(rows)
    wrong = generated_row(src, sample_index=9, answer=f"{gold}1", rationale=f"so {gold}1")
    assert reasons([wrong], only="wrong_answer") == ["wrong_answer"]
    # No gold answer: nothing to compare with, the row is left to the majority vote.
    free = generated_row(src, sample_index=10, answer="3", rationale="so 3", gold_answer=None)
    assert reasons([free], only="wrong_answer") == [None]
    off = CurationSpec(require_gold_match=False)
    assert reasons([wrong], cfg=off, only="wrong_answer") == [None]


def test_rationale_support_accepts_number_forms():
    src = SOURCES[1]
    ok = [generated_row(src, sample_index=0, answer="1200", rationale="They have 1,200 in all."),
          generated_row(src, sample_index=1, answer="eight", rationale="So the count is 8."),
          generated_row(src, sample_index=2, answer="Vorla", rationale="Hence vorla has more.")]
    assert reasons(ok, only="rationale_unsupported") == [None, None, None]
    # Containing the digits inside another number is not reaching the answer.
    bad = generated_row(src, sample_index=3, answer="12", rationale="There are 120 of them.")
    assert reasons([bad], only="rationale_unsupported") == ["rationale_unsupported"]


def test_leak_rule_spares_names_in_either_or_questions():
    src = SOURCES[2]
    choice = generated_row(src, sample_index=0, answer="Vorla", rationale="Vorla has more.",
                           question="Who has more red kites, Vorla or Kaz?")
    long_answer = generated_row(src, sample_index=1, answer="the red kite",
                                rationale="It is the red kite.",
                                question="Which is it? Hint: the red kite is.")
    assert reasons([choice, long_answer], only="answer_leaked") == [None, "answer_leaked"]


def test_judge_score_filter_only_when_configured_and_present():
    src = SOURCES[0]
    rows = [generated_row(src, sample_index=i, answer=src["answer"],
                          rationale=good_rationale(src, i)) for i in range(3)]
    df = pl.from_arrow(table(rows)).with_columns(
        judge_score=pl.Series([9.0, 3.0, None], dtype=pl.Float64))

    def run(cfg, frame):
        return frame.lazy().select(r=drop_reason(cfg, frame.columns)).collect()["r"].to_list()

    assert run(CurationSpec(min_judge_score=5.0), df) == [None, "judge_low", None]
    # Without a threshold, or without the column, nothing drops for it.
    assert run(CurationSpec(), df) == [None] * 3
    assert run(CurationSpec(min_judge_score=5.0), df.drop("judge_score")) == [None] * 3


def test_repeated_ngram_fraction():
    s = pl.Series(["a b c a b c a b c", "one two three four five", "", None])
    frac = repeated_ngram_fraction(s, 3).to_list()
    assert frac[0] == pytest.approx(4 / 7)  # 7 trigrams, 3 distinct
    assert frac[1:] == [0.0, 0.0, 0.0]


def test_length_bounds_follow_the_spec():
    src = SOURCES[0]
    r = generated_row(src, sample_index=0, answer=src["answer"], rationale=good_rationale(src))
    n = len(r["rationale"])
    assert reasons([r], CurationSpec(min_rationale_chars=n + 1), only="too_short") == ["too_short"]
    assert reasons([r], CurationSpec(max_rationale_chars=n - 1), only="too_long") == ["too_long"]
    assert reasons([r], CurationSpec(min_rationale_chars=n, max_rationale_chars=n)) == [None]


EDGE = ["The 12 apples", "  Twelve.", "$1,200", "about 3.50 kg", "Vorla", "an apple",
        "total of 7", None, "", "-0", "+5", "12345678901234567890", "€5", "Ünïcode!!", "1,2,3",
        "5\x1c", "the\tanswer", "1.0", ".5", "a\x0bb", "007", "1e5", "--3", "3 - 4", "ßtraße",
        "18 to 24", "two or three", "one-two", "7 lanterns", "seven 3"]


def test_vectorized_normalizer_equals_python_on_edge_cases():
    assert normalize_answers(pl.Series(EDGE, dtype=pl.String)).to_list() == [
        normalize_answer(x) for x in EDGE]


@settings(max_examples=120, deadline=None)
@given(st.lists(st.one_of(
    st.none(), st.text(max_size=12),
    st.text(alphabet="0123456789,.+-$ tTheaboutnlfivxs\t", max_size=14)), min_size=2, max_size=30))
def test_vectorized_matching_equals_answers_match(values):
    got = normalize_answers(pl.Series(values, dtype=pl.String)).to_list()
    assert got == [normalize_answer(v) for v in values]
    pairs = list(zip(values, reversed(values)))
    df = pl.DataFrame({"p": [p for p, _ in pairs], "g": [g for _, g in pairs]},
                      schema={"p": pl.String, "g": pl.String})
    from flows.curate.answers import matches
    assert df.select(m=matches("p", "g"))["m"].to_list() == [answers_match(p, g) for p, g in pairs]


def test_leak_marker_is_the_one_answers_are_read_after():
    """A question drops as answer_leaked for carrying an answer marker exactly when
    flows.answers finds one in it (the filter's Polars regex is built from the same pattern)."""
    from flows.answers import answer_markers

    src = SOURCES[3]
    questions = ["How many? Answer: 8", "How many? final  answer is = 8", "ANSWER IS:8 kites",
                 "How many answers: 8", "answer 8", "Is the answer= here?", "Answer\n: 8",
                 "Final\tAnswer: 8", "What is the answer", "Réponse answer : 8"]
    rows = [generated_row(src, sample_index=i, answer="zzz", rationale="It is zzz.",
                          question=q) for i, q in enumerate(questions)]
    expected = ["answer_leaked" if list(answer_markers(q)) else None for q in questions]
    assert reasons(rows, only="answer_leaked") == expected
    assert expected.count("answer_leaked") == 7
