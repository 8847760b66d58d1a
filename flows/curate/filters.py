"""Row filters: each is a named drop reason and a Polars expression that is true for rows to drop.

Question filters (no_answer, answer_leaked, wrong_answer, the rationale checks) skip text rows
(`target` = text: a textbook lesson has no answer). Filters are lazy expressions over the generated-row columns (see docs/contracts.md), so a caller can
compose, reorder or add them; `drop_reason` folds a list of them into one `when/then` chain in
which the first matching filter names the reason. Filters that need a column the rows lack (a
judge score) or a setting that is off return None and are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import polars as pl

from flows.answers import ANSWER_MARKER_PATTERN
from flows.curate import answers as ans
from flows.curate import arithmetic
from flows.curate.ngrams import ngram_hashes
from flows.curate.reviews import VERIFY_MAJORITY
from flows.prompting.hints import QUOTES_HINT, RATIONALIZE_TEMPLATE

# The marker `flows.answers.extract_answer` looks for: a question carrying it gives the answer
# away. Case-insensitive, as there.
_ANSWER_MARKER = "(?i)" + ANSWER_MARKER_PATTERN
# Characters ordinary rationale text is made of: letters, digits, spaces, arithmetic and prose
# punctuation. Anything else (control bytes, replacement chars, markup soup) counts as garbage.
_TEXT_CHARS = r"[\p{L}\p{N}\s.,:;!?'\"()\[\]\-+=*/%$€£#&_<>]"


@dataclass(frozen=True)
class Filter:
    reason: str
    drop: Callable[["FilterContext"], pl.Expr | None]


@dataclass(frozen=True)
class FilterContext:
    cfg: object  # flows.spec.CurationSpec (kept loose so filters work with any settings object)
    columns: frozenset[str]


def tokens(expr: pl.Expr) -> pl.Expr:
    """' w1 w2 ... ' of lowercase word tokens, digit groups joined ('1,200' -> '1200'), so a
    whole-token containment check is a plain substring search."""
    s = expr.fill_null("").str.to_lowercase()
    for _ in range(2):  # twice: '1,2,3' needs two passes (matches cannot overlap)
        s = s.str.replace_all(r"(\d),(\d)", "${1}${2}")
    return pl.lit(" ") + s.str.extract_all(r"\w+").list.join(" ") + pl.lit(" ")


def repeated_ngram_fraction(texts: pl.Series, n: int) -> pl.Series:
    """Share of each text's word n-grams that repeat an earlier n-gram of the same text."""
    rows, grams = ngram_hashes(texts, n)
    out = np.zeros(len(texts), dtype=np.float64)
    if len(grams):
        df = pl.DataFrame({"row": rows, "g": grams}).group_by("row").agg(
            total=pl.len(), unique=pl.col("g").n_unique())
        r = df["row"].to_numpy()
        total = df["total"].to_numpy()
        out[r] = (total - df["unique"].to_numpy()) / total
    return pl.Series(texts.name, out)


def _generation_error(ctx: FilterContext) -> pl.Expr:
    return pl.col("error").is_not_null()


def _question_row(ctx: FilterContext) -> pl.Expr:
    """Rows that answer a question; text rows (textbook lessons, `target` = text) have no answer
    to check and skip the answer filters."""
    if "target" not in ctx.columns:
        return pl.lit(True)
    return pl.col("target").fill_null("rationale") != "text"


def _no_answer(ctx: FilterContext) -> pl.Expr:
    return _question_row(ctx) & (ans.normalized("answer") == "")


def _too_short(ctx: FilterContext) -> pl.Expr:
    return pl.col("rationale").fill_null("").str.strip_chars().str.len_chars() < ctx.cfg.min_rationale_chars


def _too_long(ctx: FilterContext) -> pl.Expr:
    return ((pl.col("rationale").fill_null("").str.len_chars() > ctx.cfg.max_rationale_chars)
            | (pl.col("answer").fill_null("").str.len_chars() > ctx.cfg.max_answer_chars))


def _garbage(ctx: FilterContext) -> pl.Expr:
    text = pl.col("rationale").fill_null("")
    share = text.str.count_matches(_TEXT_CHARS) / text.str.len_chars().clip(lower_bound=1)
    return (text.str.len_chars() > 0) & (share < ctx.cfg.min_text_fraction)


def _repetition(ctx: FilterContext) -> pl.Expr:
    n = ctx.cfg.repetition_ngram
    frac = pl.col("rationale").map_batches(lambda s: repeated_ngram_fraction(s, n),
                                           return_dtype=pl.Float64)
    return frac > ctx.cfg.max_repeated_ngram_fraction


def _answer_leaked(ctx: FilterContext) -> pl.Expr:
    question = pl.col("question").fill_null("")
    marker = question.str.contains(_ANSWER_MARKER)
    answer_tokens = tokens(ans.normalized("answer"))
    long_enough = answer_tokens.str.count_matches(r"\w+") >= ctx.cfg.leak_min_words
    verbatim = long_enough & tokens(question).str.contains(answer_tokens, literal=True)
    return _question_row(ctx) & (marker | verbatim)


def _quotes_hint(ctx: FilterContext) -> pl.Expr | None:
    """A rationalized row (its teacher was shown the gold answer) whose rationale talks about
    that hint: the student, asked without it, would learn to cite a hint it never gets."""
    if "template" not in ctx.columns:
        return None
    return ((pl.col("template") == RATIONALIZE_TEMPLATE)
            & pl.col("rationale").fill_null("").str.contains(QUOTES_HINT))


def _wrong_answer(ctx: FilterContext) -> pl.Expr | None:
    if not ctx.cfg.require_gold_match or "gold_answer" not in ctx.columns:
        return None
    has_gold = ans.normalized("gold_answer") != ""
    return has_gold & ~ans.matches("answer", "gold_answer")


def _rationale_unsupported(ctx: FilterContext) -> pl.Expr:
    # The rationale must state its own final answer somewhere (as whole tokens), either as the
    # normalized form ('8' for 'eight apples') or the raw text: otherwise the answer came from
    # nowhere and training on it teaches guessing.
    text = tokens(pl.col("rationale"))
    normalized = tokens(ans.normalized("answer"))
    raw = tokens(pl.col("answer"))
    return _question_row(ctx) & ~(text.str.contains(normalized, literal=True)
                                  | text.str.contains(raw, literal=True))


def _arithmetic_error(ctx: FilterContext) -> pl.Expr | None:
    if not ctx.cfg.check_arithmetic:
        return None
    return _question_row(ctx) & arithmetic.check("arithmetic_error", list(ctx.columns))


def _unsupported_number(ctx: FilterContext) -> pl.Expr | None:
    if not ctx.cfg.check_numbers:
        return None
    return _question_row(ctx) & arithmetic.check("unsupported_number", list(ctx.columns))


def _answer_not_worked(ctx: FilterContext) -> pl.Expr | None:
    mode = ctx.cfg.worked_answer
    if mode == "never":
        return None
    if mode == "rationalized":
        if "template" not in ctx.columns:
            return None
        which = pl.col("template") == RATIONALIZE_TEMPLATE
    else:
        which = _question_row(ctx)
    return arithmetic.check("answer_not_worked", list(ctx.columns),
                            answer=ans.normalized("answer"), where=which)


def _unverified(ctx: FilterContext) -> pl.Expr | None:
    if "verify_agreement" not in ctx.columns:
        return None
    # Rows nobody re-asked (a gold answer decides them instead) pass.
    return (pl.col("verify_agreement").is_not_null()
            & (pl.col("verify_agreement") <= VERIFY_MAJORITY))


def _judge_low(ctx: FilterContext) -> pl.Expr | None:
    if ctx.cfg.min_judge_score is None or "judge_score" not in ctx.columns:
        return None
    # Rows the judge did not score (null) pass: no verdict is not a bad verdict.
    return pl.col("judge_score").cast(pl.Float64) < ctx.cfg.min_judge_score


# Order matters: the first filter that matches names the reason, cheapest and most basic first.
FILTERS: list[Filter] = [
    Filter("generation_error", _generation_error),
    Filter("no_answer", _no_answer),
    Filter("too_short", _too_short),
    Filter("too_long", _too_long),
    Filter("garbage", _garbage),
    Filter("repetition", _repetition),
    Filter("answer_leaked", _answer_leaked),
    Filter("quotes_hint", _quotes_hint),
    Filter("wrong_answer", _wrong_answer),
    Filter("rationale_unsupported", _rationale_unsupported),
    Filter("arithmetic_error", _arithmetic_error),
    Filter("unsupported_number", _unsupported_number),
    Filter("answer_not_worked", _answer_not_worked),
    Filter("unverified", _unverified),
    Filter("judge_low", _judge_low),
]


def drop_reason(cfg, columns, filters: list[Filter] = FILTERS) -> pl.Expr:
    """One expression: the first matching filter's reason, or null for rows that pass all.

    Generation errors keep their name: 'generation_error:parse_error', ...:request_failed."""
    ctx = FilterContext(cfg, frozenset(columns))
    chain = None
    for f in filters:
        cond = f.drop(ctx)
        if cond is None:
            continue
        if f.reason == "generation_error":
            value = pl.lit("generation_error:") + pl.col("error").str.extract(r"^([A-Za-z_]+)", 1).fill_null("other")
        else:
            value = pl.lit(f.reason)
        chain = pl.when(cond).then(value) if chain is None else chain.when(cond).then(value)
    if chain is None:
        return pl.lit(None, pl.String)
    return chain.otherwise(pl.lit(None, pl.String))
