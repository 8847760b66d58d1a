"""GGUFEngine decodes several conversations per llama_decode call (flows/evaluate/batched.py).
Its replies must be, token for token, what llama-cpp-python's create_chat_completion gives each
conversation alone: on the tiny model (a random model, so replies run to max tokens through odd
bytes) and on the embedded teacher (real replies that stop at end-of-sequence)."""

from __future__ import annotations

import pytest

from flows.evaluate.engines import GGUFEngine
from flows.quantize.gguf_export import export_gguf, llama_quantize
from tests.helpers.tiny_llama import tiny_llama, tiny_tokenizer

QUESTIONS = [
    "Vorla has 3 red lanterns and 5 blue lanterns. How many lanterns does Vorla have in total?",
    "Kazen has 7 green marbles and 2 white marbles.",
    "Read the passage and answer the question.",
    "Answer: 9",
    "Think step by step. Kazen has 7 green marbles and 2 white marbles. How many?",
]
# Worked examples before the question, as a base teacher is asked: a prefix every row shares.
WORKED = [{"role": "user", "content": QUESTIONS[0]}, {"role": "assistant", "content": "3 + 5 = 8"},
          {"role": "user", "content": QUESTIONS[1]}, {"role": "assistant", "content": "Answer: 9"}]


def conversations(n: int) -> list[list[dict]]:
    out = []
    for i in range(n):
        question = {"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + " " * (i // 5)}
        out.append(WORKED + [question] if i % 2 else [question])
    return out


@pytest.fixture(scope="module")
def tiny_f16(tmp_path_factory):
    tok = tiny_tokenizer()
    return export_gguf(tiny_llama(tok), tok, tmp_path_factory.mktemp("tiny") / "tiny-F16.gguf")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_f16):
    return llama_quantize(tiny_f16, tiny_f16.with_name("tiny-Q8_0.gguf"), "Q8_0")


@pytest.mark.parametrize("width", [2, 3, 8])
def test_batched_replies_are_create_chat_completions_token_for_token(tiny_gguf, width):
    convs = conversations(11)  # more than a width: slots are refilled as replies finish
    alone = GGUFEngine(tiny_gguf, threads=1, width=1)
    batched = GGUFEngine(tiny_gguf, threads=1, width=width)
    try:
        expected, expected_tokens = alone.generate_one_at_a_time(convs, 24)
        # Different lengths finish at different steps, so slots are taken mid-decode.
        short, _ = alone.generate_one_at_a_time(convs, 5)
        got, tokens = batched.generate(convs, 24)
        assert batched._batched is not None
        assert got == expected and tokens == expected_tokens
        assert batched.generate(convs, 5)[0] == short
        # A reply does not depend on which rows share its calls, or which row came before.
        assert batched.generate(convs[::-1], 24)[0] == expected[::-1]
        assert alone.generate_one_at_a_time(convs[::-1], 24)[0] == expected[::-1]
    finally:
        alone.close()
        batched.close()


def test_float_files_are_decoded_one_at_a_time(tiny_f16, tiny_gguf):
    # Their several-row products sum in another order on some inputs only (a tiny F16 reply
    # differed beside others where the probe passed two rows), so they are not probed.
    convs = conversations(5)
    f16 = GGUFEngine(tiny_f16, threads=1, width=4)
    try:
        assert f16.batched_decoder().width == 1
        assert f16.generate(convs, 8) == f16.generate_one_at_a_time(convs, 8)
    finally:
        f16.close()


def test_the_probe_keeps_only_the_widths_whose_steps_match_steps_alone(tiny_gguf, monkeypatch):
    """A file whose steps of 3 or more rows move one logit by one ulp (as the 1.5B Qwen's
    Q4_K_M steps of 4 or more did on an AVX2 CPU) is decoded 2 at a time (fewer if this CPU's
    own steps allow fewer), and its replies are still the replies alone: the probe leaves
    nothing behind in the slots."""
    import numpy as np

    from flows.evaluate.batched import BatchedDecoder
    from tests.helpers.probed import probed_width

    # What this CPU's kernels allow unpatched (8 on the machines measured; less elsewhere).
    expected = min(2, probed_width(tiny_gguf, width=6, threads=1))
    decode, logits = BatchedDecoder._decode, BatchedDecoder._logits
    rows = []

    def counting_decode(self, items):
        rows.append(len({seq for _, _, seq, _ in items}))  # sequences in this call
        return decode(self, items)

    def moved_logits(self, i):
        out = logits(self, i)
        if rows[-1] >= 3 and i == 0:
            out = out.copy()
            out[0] = np.nextafter(out[0], np.inf)
        return out

    monkeypatch.setattr(BatchedDecoder, "_decode", counting_decode)
    monkeypatch.setattr(BatchedDecoder, "_logits", moved_logits)
    convs = conversations(7)
    engine = GGUFEngine(tiny_gguf, threads=1, width=6)
    try:
        assert engine.batched_decoder().width == expected
        probe_steps = len(rows)
        assert engine.generate(convs, 12) == engine.generate_one_at_a_time(convs, 12)
        # No call of the replies took more rows than the probe passed.
        assert max(rows[probe_steps:], default=1) == expected
    finally:
        engine.close()


def test_a_prompt_longer_than_the_context_is_named(tiny_gguf):
    engine = GGUFEngine(tiny_gguf, threads=1, n_ctx=64, width=2)
    try:
        with pytest.raises(ValueError, match="conversation 1: its prompt is .* tokens"):
            engine.generate([[{"role": "user", "content": "hi"}],
                             [{"role": "user", "content": QUESTIONS[0] * 40}]], 8)
    finally:
        engine.close()


@pytest.mark.slow
def test_the_embedded_teacher_gives_the_same_replies_batched():
    from flows.embedded import embedded_gguf
    from flows.ingest.demo import generate
    from flows.prompting.check import student_template
    from flows.spec import load

    template = student_template(load("curricula/quickstart.yaml"))
    rows = list(generate(6, seed=7, people=2, colors=3))
    convs = [template.render(r, few_shot=i % 2 == 1) for i, r in enumerate(rows)]
    alone = GGUFEngine(embedded_gguf(), width=1)
    batched = GGUFEngine(embedded_gguf(), width=4)
    try:
        expected, n = alone.generate_one_at_a_time(convs, 64)
        got, m = batched.generate(convs, 64)
    finally:
        alone.close()
        batched.close()
    assert got == expected and m == n
    assert any("Answer" in text for text in got)  # real replies, not noise
    assert n < 64 * len(convs)  # some stopped at end-of-sequence before max tokens
