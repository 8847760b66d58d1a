"""`flows.answers.normalize_answer`, vectorized over a Polars column.

Curation compares every teacher answer with its gold answer; a Python call per row is the slow
part at millions of rows. Plain-ASCII answers (nearly all of them) go through Polars string
kernels that reproduce `normalize_answer` step by step; anything else (non-ASCII text, decimals,
integers too long for exact float round-trips) falls back to the Python function itself, called
once per distinct value. The test suite checks the two agree on generated strings, so the rule
stays the one `flows/answers.py` defines.
"""

from __future__ import annotations

import polars as pl

from flows.answers import NUMBER_WORDS, normalize_answer

# Printable ASCII plus the whitespace Python's str.strip() and Rust's \s agree on. Python also
# treats \x1c-\x1f as whitespace and Rust does not, so those take the Python path.
_ASCII_SAFE = r"^[\x20-\x7e\t\n\r\x0b\x0c]*$"
_ASCII_WS = " \t\n\r\x0b\x0c"
_LEADING_NOISE = r"^(?:the|a|an|about|approximately|exactly|total(?:\s+of)?)\s+"
_NUMBER = r"^([-+]?\d[\d,]*(?:\.\d+)?)"
_NUMBER_WORD = r"\b(?:" + "|".join(NUMBER_WORDS) + r")\b"  # over-matches; Python decides
_SHORT_INT = r"^[-+]?\d{1,15}$"  # exact as float and as Int64: same text either way


def _fast(col: pl.Expr) -> pl.Expr:
    s = (col.str.strip_chars(_ASCII_WS).str.to_lowercase().str.strip_chars(" .!*\"'`")
         .str.replace(_LEADING_NOISE, "").str.replace_all("$", "", literal=True))
    first = s.str.extract(r"^\s*(\S+)", 1)
    word_number = first.replace_strict(NUMBER_WORDS, default=None, return_dtype=pl.String)
    token = s.str.extract(_NUMBER, 1).str.replace_all(",", "", literal=True)
    short_int = token.str.contains(_SHORT_INT)
    number = pl.when(short_int).then(
        token.str.strip_prefix("+").cast(pl.Int64, strict=False).cast(pl.String))
    text = s.str.replace_all(r"[^\w\s-]", "").str.replace_all(r"\s+", " ").str.strip_chars()
    # A second number after the first ("18 to 24") makes it a phrase; rare, so Python decides.
    rest = pl.when(word_number.is_not_null()).then(s.str.replace(r"^\s*\S+", "")).otherwise(
        s.str.replace(_NUMBER, ""))
    another = rest.str.contains(r"\d") | rest.str.contains(_NUMBER_WORD)
    return (pl.when((word_number.is_not_null() | token.is_not_null()) & another)
            .then(pl.lit(None, pl.String))
            .when(word_number.is_not_null()).then(word_number)
            .when(token.is_not_null() & short_int).then(number)
            .when(token.is_null()).then(text)
            .otherwise(pl.lit(None, pl.String)))  # decimals / long numbers: Python path


def normalize_answers(answers: pl.Series) -> pl.Series:
    """`normalize_answer` for every value of a string Series (null -> "")."""
    df = pl.DataFrame({"a": answers.cast(pl.String)})
    df = df.with_columns(
        safe=pl.col("a").str.contains(_ASCII_SAFE).fill_null(True),
        fast=_fast(pl.col("a")),
    )
    need = df.filter(pl.col("a").is_not_null() & (~pl.col("safe") | pl.col("fast").is_null()))
    slow = need["a"].unique()
    mapping = dict(zip(slow.to_list(), (normalize_answer(v) for v in slow.to_list())))
    out = df.select(
        pl.when(pl.col("a").is_null()).then(pl.lit(""))
        .when(pl.col("safe") & pl.col("fast").is_not_null()).then(pl.col("fast"))
        .otherwise(pl.col("a").replace_strict(mapping, default=None, return_dtype=pl.String))
        .alias(answers.name or "normalized"))
    return out.to_series()


def normalized(col: str) -> pl.Expr:
    """Lazy expression form: the column's answers normalized."""
    return pl.col(col).map_batches(normalize_answers, return_dtype=pl.String)


def matches(predicted: str, gold: str) -> pl.Expr:
    """`answers_match` as an expression: both normalized, non-empty and equal."""
    p, g = normalized(predicted), normalized(gold)
    return (p != "") & (p == g)

