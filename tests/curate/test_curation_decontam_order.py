"""Decontamination (planted eval n-grams: none may survive), self-consistency, curriculum order."""

from __future__ import annotations

import json

import polars as pl
import pytest

from flows.curate import decontam
from flows.curate.decontam import benchmark_texts, contaminated, eval_ngrams
from flows.curate.pipeline import curate_rows
from flows.spec import CurationSpec
from tests.helpers.curation_fixtures import (
    corpus_rows,
    generated_row,
    good_rationale,
    table,
    teacher_rows,
)


def curate(rows, cfg=None, grams=None):
    return curate_rows(pl.from_arrow(table(rows)).lazy(), cfg or CurationSpec(), eval_grams=grams)


EVAL_ITEM = ("The lighthouse keeper counted forty seven gulls on the northern rocks before the "
             "storm arrived at dawn and then wrote the number in her log")


def test_no_row_sharing_an_eval_ngram_survives():
    sources = corpus_rows(60, seed=11)
    rows = teacher_rows(sources, samples=2, p_correct=1.0, seed=2)
    words = EVAL_ITEM.split()
    planted_ids = set()
    for i, r in enumerate(rows[:30]):
        # a 13-word window of the eval item, at a different offset per row, inside the rationale
        lo = i % (len(words) - 13)
        window = " ".join(words[lo:lo + 13])
        r["rationale"] = f"{window.upper()}! {r['rationale']}"
        planted_ids.add(r["id"])
    near_miss = rows[30]  # only 12 consecutive words: not contamination at n=13
    near_miss["rationale"] = " ".join(words[:12]) + ". " + near_miss["rationale"]
    grams = eval_ngrams([pl.Series([EVAL_ITEM])], 13)
    df = curate(rows, grams=grams)
    dropped = set(df.filter(pl.col("drop_reason") == "contaminated")["id"])
    assert planted_ids <= dropped
    assert near_miss["id"] not in dropped
    texts = df.filter("keep").select(decontam.training_text(df.columns)).to_series()
    assert not contaminated(texts, grams, 13).any()
    # a smaller n catches the 12-word overlap too
    grams8 = eval_ngrams([pl.Series([EVAL_ITEM])], 8)
    cfg = CurationSpec(decontaminate={"ngram": 8})
    df8 = curate(rows, cfg, grams=grams8)
    assert near_miss["id"] in set(df8.filter(pl.col("drop_reason") == "contaminated")["id"])


def test_eval_question_in_the_prompt_is_contamination():
    sources = corpus_rows(20, seed=4)
    rows = teacher_rows(sources, samples=1, p_correct=1.0)
    # The held-out split accidentally contains the passage of source 0 verbatim.
    eval_rows = pl.LazyFrame({"passage": [sources[0]["passage"]], "question": ["?"],
                              "answer": ["1"]})
    grams = eval_ngrams([decontam.eval_texts(eval_rows)], 13)
    df = curate(rows, grams=grams)
    hit = df.filter(pl.col("drop_reason") == "contaminated")["source_id"].to_list()
    assert hit == [sources[0]["id"]]


def test_benchmark_file_formats(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"q": "alpha beta", "choices": ["gamma"]}) + "\n\n")
    (tmp_path / "b.txt").write_text("one line\n\nsecond line\n")
    pl.DataFrame({"q": ["x y"], "n": [1]}).write_parquet(tmp_path / "b.parquet")
    assert benchmark_texts(tmp_path / "b.jsonl").to_list() == ["alpha beta\ngamma"]
    assert benchmark_texts(tmp_path / "b.txt").to_list() == ["one line", "second line"]
    assert benchmark_texts(tmp_path / "b.parquet").to_list() == ["x y"]
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        benchmark_texts(tmp_path / "bad.jsonl")


def test_majority_vote_without_gold_and_confidence():
    src = corpus_rows(1, seed=8)[0]
    answers = ["7", "seven", "7", "9"]
    rows = [generated_row(src, sample_index=i, answer=a, gold_answer=None,
                          rationale=f"Counting step {i} carefully gives {a}.")
            for i, a in enumerate(answers)]
    df = curate(rows).sort("sample_index")
    assert df["drop_reason"].to_list() == [None, None, None, "disagrees_with_majority"]
    assert df["confidence"].to_list() == [0.75, 0.75, 0.75, 0.25]
    df = curate(rows, CurationSpec(min_confidence=0.8))
    assert set(df["drop_reason"]) == {"low_confidence", "disagrees_with_majority"}


def test_gold_keeps_a_correct_minority_with_low_confidence():
    src = corpus_rows(1, seed=8)[0]
    gold, wrong = src["answer"], str(int(src["answer"]) + 1)
    rows = [generated_row(src, sample_index=i, answer=a,
                          rationale=good_rationale(src, i, a)) for i, a in enumerate([wrong, wrong, wrong, gold])]
    df = curate(rows).sort("sample_index")
    assert df["drop_reason"].to_list() == ["wrong_answer"] * 3 + [None]
    assert df["confidence"][3] == 0.25


def _many_rows():
    return teacher_rows(corpus_rows(200, seed=6), samples=4, p_correct=0.6, seed=3)


def test_curriculum_order_is_deterministic_and_easy_first():
    rows = _many_rows()
    a = curate(rows).filter("keep").sort("order")
    b = curate(list(reversed(rows))).filter("keep").sort("order")
    assert a["id"].to_list() == b["id"].to_list()
    assert a["order"].to_list() == list(range(len(a)))
    stages = a["curriculum_stage"].to_list()
    assert stages == sorted(stages) and set(stages) == {0, 1, 2}
    by_stage = a.group_by("curriculum_stage").agg(pl.col("difficulty").max(), pl.col("difficulty").min().alias("lo")).sort("curriculum_stage")
    assert all(by_stage["difficulty"][k] <= by_stage["lo"][k + 1] for k in range(2))
    assert a["difficulty"].is_between(0, 1).all()


def test_curriculum_mix_sets_stage_shares():
    rows = _many_rows()
    cfg = CurationSpec(curriculum={"stages": 3, "mix": [0.5, 0.3, 0.2]})
    df = curate(rows, cfg)
    kept = df.filter("keep")
    shares = kept.group_by("curriculum_stage").len().sort("curriculum_stage")["len"].to_list()
    assert shares[0] > shares[1] > shares[2]
    assert abs(shares[0] / sum(shares) - 0.5) < 0.02
    assert (df["drop_reason"] == "curriculum_mix").sum() > 0
    assert kept["order"].sort().to_list() == list(range(len(kept)))


def test_mix_must_match_stages():
    with pytest.raises(ValueError, match="mix has 2 shares for 3 stages"):
        CurationSpec(curriculum={"stages": 3, "mix": [0.5, 0.5]})
    with pytest.raises(ValueError, match="exceeds permutations"):
        CurationSpec(near_dedup={"bands": 20, "rows": 8, "permutations": 112})
