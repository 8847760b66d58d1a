"""Perplexity and fidelity come from one pass of logits per row (flows/evaluate/score.py):
checked against torch's own loss and against a second, different model."""

from __future__ import annotations

import math

import pytest

from flows.evaluate.engines import TorchEngine
from flows.evaluate.score import logit_scores, perplexity_text
from tests.helpers.tiny_llama import tiny_llama, tiny_tokenizer

ROWS = [{"passage": "Vorla has 3 red lanterns and 5 blue lanterns.",
         "question": "How many lanterns does Vorla have in total?", "answer": "8"},
        {"passage": "Kazen has 7 green marbles and 2 white marbles.",
         "question": "How many marbles does Kazen have?", "answer": "9"}]


def test_perplexity_is_torch_loss_and_fidelity_sees_another_model():
    import torch

    tok = tiny_tokenizer()
    model, other = tiny_llama(tok, seed=0), tiny_llama(tok, seed=1)
    engine, reference = TorchEngine(model, tok), TorchEngine(other, tok)

    nll, tokens = 0.0, 0
    with torch.no_grad():
        for r in ROWS:
            ids = torch.tensor([tok(perplexity_text(r))["input_ids"]])
            n = ids.shape[1] - 1
            nll += float(model(input_ids=ids, labels=ids).loss) * n  # mean over n targets
            tokens += n
    alone = logit_scores(engine, ROWS, tok)
    assert set(alone) == {"perplexity"}
    assert alone["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)

    itself = logit_scores(engine, ROWS, tok, reference=engine)
    assert itself["perplexity"] == pytest.approx(alone["perplexity"], rel=1e-9)
    assert itself["kl_divergence"] == pytest.approx(0.0, abs=1e-9)
    assert itself["same_top_token"] == 1.0 and itself["kl_tokens"] == tokens

    against = logit_scores(engine, ROWS, tok, reference=reference)
    assert against["perplexity"] == pytest.approx(alone["perplexity"], rel=1e-9)
    assert against["kl_divergence"] > 0.05 and against["same_top_token"] < 1.0


def test_saved_reference_logits_give_the_same_fidelity_as_the_reference(tmp_path):
    """The quantize stage saves the float file's logits in its own pass (SavedLogits) and
    compares the other files with them: the same numbers as asking the float model again."""
    from flows.evaluate.saved_logits import SavedLogits

    tok = tiny_tokenizer()
    engine, reference = TorchEngine(tiny_llama(tok, seed=0), tok), TorchEngine(tiny_llama(tok, seed=1), tok)
    opened = []
    saved = SavedLogits(tmp_path / "logits", lambda: opened.append(1) or reference)
    own = logit_scores(saved.recording(reference), ROWS, tok)
    assert own == logit_scores(reference, ROWS, tok)
    assert len(list((tmp_path / "logits").glob("*.npy"))) == len(ROWS)
    assert logit_scores(engine, ROWS, tok, reference=saved) == logit_scores(
        engine, ROWS, tok, reference=reference)
    assert saved.hits == len(ROWS) and not opened  # read back, the reference never asked
    # A sequence nobody saved: the fallback opens the reference once and answers.
    more = [{**ROWS[0], "answer": "10"}]
    assert logit_scores(engine, more, tok, reference=saved) == logit_scores(
        engine, more, tok, reference=reference)
    assert saved.misses == 1 and opened == [1]
