"""Checks a reader makes of a rationale's arithmetic.

A step is "a + b = c", "a - b = c", "a × b = c" (also x, *, ·), "a / b = c" (also ÷), or a
chain of them ("3 + 5 + 2 = 10", evaluated with × and / before + and -). Each operand may carry up
to three words of unit ("1 black feather + 8 red feathers = 9"): small teachers write sums that
way, and a wrong one ("... + 4 green feathers = 49 feathers") must not pass unchecked. Three checks:

- arithmetic_error: some step does not hold. c may be rounded to its own precision
  ("10 / 3 = 3.33" holds, "3 + 5 = 9" does not).
- unsupported_number: some operand of a step is neither a number of the passage or question
  nor the result of an earlier step: the rationale computed with a number from nowhere.
  Conclusions ("so the total is 8") are not operands; whether they are right is what the
  answer checks and arithmetic_error decide.
- answer_not_worked: the answer is a number that no step computes and that the passage and
  question do not contain: the rationale states the answer without working it out ("Lofi has
  16 shells."). A student trained on it learns to answer without adding.

Steps are found and joined per row in Polars (extract, explode, anti-join); only the distinct
step strings are evaluated in Python.
"""

from __future__ import annotations

import re

import polars as pl

NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
OP = r"(?:\s*[+\-−–×*·/÷]\s*|\s+[xX]\s+)"
UNIT = r"(?:\s+[A-Za-z]{2,}){0,3}"  # words after an operand: "4 green feathers"
STEP = rf"{NUM}{UNIT}(?:{OP}{NUM}{UNIT})+\s*=\s*-?{NUM}"
_TOKEN = re.compile(rf"{NUM}|[+\-−–×*·/÷xX]")
_WORD = re.compile(r"[A-Za-z]{2,}")


def number(text: str) -> float:
    return float(text.replace(",", ""))


def evaluate(step: str) -> tuple[bool, list[float], float | None]:
    """(holds, operands, result) of one step string matched by STEP."""
    left, _, right = step.rpartition("=")
    # Unit words go first: the x of "boxes" is not a times sign.
    tokens = [t for t in _TOKEN.findall(_WORD.sub(" ", left)) if t.strip()]
    values = [number(t) for t in tokens[0::2]]
    ops = ["-" if o in "-−–" else "*" if o in "×*·xX" else "/" if o in "/÷" else o
           for o in tokens[1::2]]
    result = float(right.strip().replace(",", ""))
    # × and / first, then + and - left to right.
    terms, signs = [values[0]], []
    for op, v in zip(ops, values[1:]):
        if op == "*":
            terms[-1] *= v
        elif op == "/":
            if v == 0:
                return False, values, result
            terms[-1] /= v
        else:
            signs.append(op)
            terms.append(v)
    total = terms[0]
    for op, v in zip(signs, terms[1:]):
        total = total + v if op == "+" else total - v
    decimals = len(right.strip().split(".", 1)[1]) if "." in right else 0
    return abs(total - result) <= 0.5 * 10 ** -decimals + 1e-9, values, result


def _steps(df: pl.DataFrame) -> pl.DataFrame:
    """One row per step: (row, index, holds, operands, result)."""
    steps = (df.select(pl.int_range(pl.len()).alias("row"),
                       step=pl.col("rationale").fill_null("").str.extract_all(STEP))
             .explode("step").drop_nulls("step")
             .with_columns(index=pl.int_range(pl.len()).over("row")))
    if not len(steps):
        return steps.with_columns(holds=pl.lit(True), operands=pl.lit([], pl.List(pl.Float64)),
                                  result=pl.lit(None, pl.Float64))
    distinct = steps["step"].unique().to_list()
    parsed = {s: evaluate(s) for s in distinct}
    table = pl.DataFrame({"step": distinct,
                          "holds": [parsed[s][0] for s in distinct],
                          "operands": [parsed[s][1] for s in distinct],
                          "result": [parsed[s][2] for s in distinct]},
                         schema={"step": pl.String, "holds": pl.Boolean,
                                 "operands": pl.List(pl.Float64), "result": pl.Float64})
    return steps.join(table, on="step", how="left")


def arithmetic_errors(df: pl.DataFrame) -> pl.Series:
    """True for rows with a step that does not hold."""
    steps = _steps(df)
    bad = steps.filter(~pl.col("holds"))["row"].unique()
    return pl.Series("arithmetic_error", pl.int_range(len(df), eager=True).is_in(bad.implode()))


# Numbers a problem writes as words, and what a rationale computes with in their place ("half
# that much" is "/ 2" or "x 0.5"). Real sets need them: on GSM8K's right solutions the check
# without them dropped 33 of 64, many for numbers the problem wrote as words (2026-12-03).
WORD_NUMBERS = {
    **{w: [float(i)] for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split())},
    **{w: [float(10 * i)] for i, w in enumerate(
        "thirty forty fifty sixty seventy eighty ninety".split(), start=3)},
    "hundred": [100.0], "thousand": [1000.0], "dozen": [12.0], "twice": [2.0],
    "double": [2.0], "triple": [3.0], "thrice": [3.0], "half": [2.0, 0.5],
    "quarter": [4.0, 0.25], "third": [3.0], "percent": [100.0],
}
_WORD_NUMBER = rf"(?i)\b(?:{'|'.join(WORD_NUMBERS)})\b"
_WORD_VALUES = pl.DataFrame(
    [(w, v) for w, values in WORD_NUMBERS.items() for v in values],
    schema={"word": pl.String, "value": pl.Float64}, orient="row")


def _source_numbers(df: pl.DataFrame) -> pl.DataFrame:
    """(row, value): the distinct numbers of each row's passage and question, in digits or in
    words (WORD_NUMBERS)."""
    text = df.select(pl.int_range(pl.len()).alias("row"),
                     text=pl.concat_str([pl.col("passage").fill_null(""),
                                         pl.col("question").fill_null("")], separator=" "))
    digits = (text.select("row", value=pl.col("text").str.extract_all(NUM))
              .explode("value").drop_nulls("value")
              .with_columns(pl.col("value").str.replace_all(",", "").cast(pl.Float64)))
    words = (text.select("row", word=pl.col("text").str.extract_all(_WORD_NUMBER))
             .explode("word").drop_nulls("word")
             .with_columns(pl.col("word").str.to_lowercase())
             .join(_WORD_VALUES, on="word").select("row", "value"))
    return pl.concat([digits, words]).unique()


def unsupported_numbers(df: pl.DataFrame) -> pl.Series:
    """True for rows with a step operand that is neither in the passage/question nor an
    earlier step's result."""
    steps = _steps(df)
    operands = (steps.select("row", "index", value=pl.col("operands")).explode("value")
                .drop_nulls("value"))
    source = _source_numbers(df)
    results = (steps.group_by("row", pl.col("result").alias("value"))
               .agg(first=pl.col("index").min()))
    unsupported = (operands.join(source, on=["row", "value"], how="anti")
                   .join(results, on=["row", "value"], how="left")
                   .filter(pl.col("first").is_null() | (pl.col("first") >= pl.col("index"))))
    bad = unsupported["row"].unique()
    return pl.Series("unsupported_number",
                     pl.int_range(len(df), eager=True).is_in(bad.implode()))


def unworked_answers(df: pl.DataFrame) -> pl.Series:
    """True for rows whose `answer` (normalized) is a number that is neither a step's result
    nor a number of the passage/question; rows with a non-numeric answer pass."""
    steps = _steps(df)
    known = pl.concat([steps.select("row", value=pl.col("result")), _source_numbers(df)])
    answers = (df.select(pl.int_range(pl.len()).alias("row"),
                         value=pl.col("answer").str.replace_all(",", "")
                         .cast(pl.Float64, strict=False))
               .drop_nulls("value"))
    bad = answers.join(known, on=["row", "value"], how="anti")["row"].unique()
    return pl.Series("answer_not_worked",
                     pl.int_range(len(df), eager=True).is_in(bad.implode()))


CHECKS = {"arithmetic_error": arithmetic_errors, "unsupported_number": unsupported_numbers,
          "answer_not_worked": unworked_answers}


def check(kind: str, columns: list[str], answer: pl.Expr | None = None,
          where: pl.Expr | None = None) -> pl.Expr:
    """The check as a lazy expression over (rationale, passage, question) and, for
    answer_not_worked, `answer`: the normalized answer. With `where`, only the rows it selects
    are checked (the others are False): a check that concerns a few rows (the rationalized
    ones) then costs nothing on the rest."""
    fn = CHECKS[kind]
    fields = [pl.col(c).cast(pl.String) for c in ("rationale", "passage", "question")
              if c in columns]
    if answer is not None:
        fields.append(answer.alias("answer"))
    if where is not None:
        fields.append(where.fill_null(False).alias("_where"))

    def run(s: pl.Series) -> pl.Series:
        frame = s.struct.unnest()
        for c in ("rationale", "passage", "question", "answer"):
            if c not in frame.columns:
                frame = frame.with_columns(pl.lit(None, pl.String).alias(c))
        if "_where" not in frame.columns:
            return fn(frame)
        picked = frame["_where"].arg_true()
        out = pl.Series(kind, [False] * len(frame), pl.Boolean)
        if len(picked):
            out = out.scatter(picked, fn(frame[picked]))
        return out

    return pl.struct(fields).map_batches(run, return_dtype=pl.Boolean)
