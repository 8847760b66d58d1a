import random

import pytest

from flows.answers import (
    ANSWER_MARKER,
    answer_markers,
    answers_match,
    extract_answer,
    is_number,
    normalize_answer,
)


@pytest.mark.parametrize("text,expected", [
    ("3 + 4 = 7.\nAnswer: 7", "7"),
    ("answer: 12 lanterns\nmore text", "12 lanterns"),
    ("The final answer is: Vorla", "Vorla"),
    ("Answer: 1\nwait, Answer: 2", "2"),
    ("no marker here 7", None),
    ("Answer:", None),
    ("", None),
])
def test_extract(text, expected):
    assert extract_answer(text) == expected


def test_answer_markers_finds_what_the_pattern_finds():
    # The fast search must agree with ANSWER_MARKER.finditer on every text: pieces that make
    # near-misses ("answers:", "final\n answer", "is is:"), upper case, non-ASCII look-alikes
    # (the long s and Kelvin sign match under IGNORECASE), odd whitespace.
    pieces = ["answer", "Answer", "ANSWER", "answers", "final", "FINAL", "Final ", " ", "  ",
              "\n", "\t", "\x1c", ":", "=", "is", " is", "x", "42", "ſ", "\u212a", "é", "an",
              "swer", "fin", "al", "**"]
    rng = random.Random(7)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 14)))
        assert list(answer_markers(text)) == [(m.start(), m.end())
                                              for m in ANSWER_MARKER.finditer(text)], repr(text)


@pytest.mark.parametrize("raw,norm", [
    ("7", "7"), (" 7. ", "7"), ("7 lanterns", "7"), ("$1,200", "1200"), ("12.0", "12"),
    ("seven", "7"), ("The Vorla", "vorla"), ("**Zen-mo**", "zen-mo"), ("2.5", "2.5"),
    (None, ""), ("18 to 24", "18 to 24"), ("two or three", "two or three"),
])
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


def test_match():
    assert answers_match("12 marbles", "12")
    assert answers_match("Kathu.", "kathu")
    assert not answers_match("13", "12")
    assert not answers_match("", "")
    assert not answers_match(None, "3")


def test_a_range_is_not_its_first_number():
    # DROP: "Which age group is smaller" has the gold answer "18 to 24"; a wrong "18" must not match
    assert not answers_match("18", "18 to 24")
    assert answers_match("18 to 24.", "18 to 24")


@pytest.mark.parametrize("answer,numeric", [
    ("17,000", True), ("$5", True), ("67.8%", True), ("seven", True), ("-3", True),
    ("58-yard", True), ("65 years of age", True), ("18 to 24", False), ("49ers", False),
    ("the 2016 election", False), ("the Twelve Articles", False), ("five Colleges, Court", False),
    (None, False),
])
def test_is_number_wants_the_whole_answer(answer, numeric):
    assert is_number(answer) is numeric
