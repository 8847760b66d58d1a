import pytest

from flows.answers import answers_match, extract_answer, normalize_answer


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


@pytest.mark.parametrize("raw,norm", [
    ("7", "7"), (" 7. ", "7"), ("7 lanterns", "7"), ("$1,200", "1200"), ("12.0", "12"),
    ("seven", "7"), ("The Vorla", "vorla"), ("**Zen-mo**", "zen-mo"), ("2.5", "2.5"),
    (None, ""),
])
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


def test_match():
    assert answers_match("12 marbles", "12")
    assert answers_match("Kathu.", "kathu")
    assert not answers_match("13", "12")
    assert not answers_match("", "")
    assert not answers_match(None, "3")
