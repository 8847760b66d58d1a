"""A llama.cpp teacher answers in process, several sequences per decode step
(flows/teachers/llamacpp_batched.py), through the real generate stage: its rows hold the replies
create_chat_completion gives each prompt alone (greedy, or sampled from the request's seed),
budgets and resumes stop and continue it, and a prompt that does not fit is one row with a named
error. On the tiny random model (replies run to
max tokens through odd bytes); tests/generate/test_generate_slow.py compares the embedded
teacher's replies with its server's."""

from __future__ import annotations

import pytest

from flows.evaluate.engines import GGUFEngine
from flows.generate import generate
from flows.quantize.gguf_export import export_gguf, llama_quantize
from flows.spec import Curriculum, TeacherSpec
from flows.teachers import make_teacher
from flows.teachers.llamacpp import LlamaCppTeacher
from flows.teachers.llamacpp_batched import BatchedLlamaTeacher
from tests.helpers.probed import probed_width
from tests.helpers.tiny_llama import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    tok = tiny_tokenizer()
    f16 = export_gguf(tiny_llama(tok), tok, tmp_path_factory.mktemp("tiny") / "tiny-F16.gguf")
    return llama_quantize(f16, f16.with_name("tiny-Q8_0.gguf"), "Q8_0")


def _spec(gguf, rows: int, **teacher) -> Curriculum:
    return Curriculum.model_validate({
        "name": "batched-teacher",
        "corpus": {"format": "demo", "demo": {"rows": 40, "seed": 2}, "eval_fraction": 0.1},
        "teacher": {"backend": "llamacpp", "model": str(gguf), "temperature": 0.0,
                    "max_tokens": 12, "few_shot": False, **teacher},
        "generate": {"template": "rationale", "max_rows": rows, "batch_rows": 4}})


def _rows(workspace, run_id):
    stage = workspace.latest_stage("generate", run_id=run_id, round_index=0)
    return workspace.store.scan(workspace.shards(stage, "generated")).collect()


def test_only_reproducible_text_requests_leave_the_server(tiny_gguf):
    def kind(**kw):
        return type(make_teacher(TeacherSpec(backend="llamacpp", model=str(tiny_gguf), **kw)))

    assert kind(temperature=0.0) is BatchedLlamaTeacher
    # The server's identity: what either path cached is served to both.
    greedy = TeacherSpec(backend="llamacpp", model=str(tiny_gguf), temperature=0.0)
    assert make_teacher(greedy).identity == LlamaCppTeacher(greedy).identity
    assert kind(temperature=0.7) is BatchedLlamaTeacher  # seeded: the server's sampler chain
    assert kind(temperature=0.7, seed=None) is LlamaCppTeacher  # the server's own random seed
    # A caller that talks HTTP to it (on-policy scoring) gets the server whatever it asks.
    assert type(make_teacher(greedy, endpoint=True)) is LlamaCppTeacher
    assert kind(temperature=0.0, top_logprobs=2) is LlamaCppTeacher
    assert kind(temperature=0.0, structured_output=True) is LlamaCppTeacher


def test_generate_rows_hold_each_prompts_reply_alone(workspace, tiny_gguf):
    import json

    spec = _spec(tiny_gguf, rows=11)  # more rows than the 8 slots: slots refill mid-decode
    run_id = workspace.start_run(spec, "generate").id
    summary = generate(spec, workspace, run_id, progress_bar=False)
    df = _rows(workspace, run_id)
    assert summary.complete and summary.sent == 11 == df.height
    # Decoded as many sequences per step as the probe passed, not one request at a time.
    assert summary.concurrency_min == probed_width(tiny_gguf)
    alone = GGUFEngine(tiny_gguf, width=1)
    try:
        expected, _ = alone.generate_one_at_a_time(
            [json.loads(m) for m in df["messages"].to_list()], 12)
    finally:
        alone.close()
    assert df["response"].to_list() == expected
    assert (df["completion_tokens"] > 0).all() and (df["prompt_tokens"] > 0).all()
    assert set(df["finish_reason"].to_list()) <= {"stop", "length"}
    # One more row in a new run: the 11 answered are served from the response cache.
    more = _spec(tiny_gguf, rows=12)
    more_run = workspace.start_run(more, "generate").id
    again = generate(more, workspace, more_run, progress_bar=False)
    assert again.sent == 1 and again.cache_hits == 11 and _rows(workspace, more_run).height == 12


def test_a_budget_stops_admitting_and_a_resume_finishes(workspace, tiny_gguf):
    spec = _spec(tiny_gguf, rows=10, max_requests=3)
    run_id = workspace.start_run(spec, "generate").id
    first = generate(spec, workspace, run_id, progress_bar=False)
    assert first.sent == 3 and not first.complete and _rows(workspace, run_id).height == 3
    spec = _spec(tiny_gguf, rows=10)
    second = generate(spec, workspace, run_id, progress_bar=False)
    assert second.complete and second.sent == 7 and second.resumed_requests == 3
    assert _rows(workspace, run_id).height == 10


def test_a_prompt_longer_than_the_context_is_a_row_with_the_reason(tiny_gguf):
    from flows.teachers import Request, Sampling, running
    from flows.teachers.aio import run_coroutine

    teacher = BatchedLlamaTeacher(TeacherSpec(backend="llamacpp", model=str(tiny_gguf),
                                              temperature=0.0), n_ctx=64)
    sampling = Sampling(0.0, 1.0, 4, None, 0)
    requests = [Request("long", [{"role": "user", "content": "lanterns " * 600}], sampling, 0),
                Request("short", [{"role": "user", "content": "Answer: 9"}], sampling, 0)]
    got = {}

    async def ask():
        async for answers in teacher.stream(requests):
            got.update({req.key: reply for req, reply in answers})

    with running(teacher):
        run_coroutine(ask())
    assert got["long"].error.startswith("request_failed: ") and "context window" in \
        got["long"].error
    assert got["short"].error is None and got["short"].completion_tokens > 0


def test_sampled_rows_hold_each_requests_seeded_reply_alone(workspace, tiny_gguf):
    """Two samples per problem at temperature 1: each row is create_chat_completion's reply to
    its messages with its own seed (seed + sample index) and the server's sampler defaults,
    though the second sample's prompt was copied from the first, not evaluated again."""
    import json

    import polars as pl

    from flows.evaluate.batched import prompt_tokens

    spec = _spec(tiny_gguf, rows=6, temperature=1.0, top_p=0.9, samples=2, seed=7)
    run_id = workspace.start_run(spec, "generate").id
    summary = generate(spec, workspace, run_id, progress_bar=False)
    df = _rows(workspace, run_id).sort("request_hash")
    assert summary.complete and summary.sent == 12 == df.height
    assert summary.concurrency_min == probed_width(tiny_gguf)
    alone = GGUFEngine(tiny_gguf, width=1)
    llm = alone.llm
    expected = []
    try:
        for messages, sample in zip(df["messages"].to_list(), df["sample_index"].to_list()):
            messages = json.loads(messages)
            prompt, shared, _ = prompt_tokens(llm, alone.formatter, messages)
            llm.reset()  # each prompt evaluated in the decoder's pieces (shared prefix first)
            if shared:
                llm.eval(prompt[:shared])
            reply = llm.create_chat_completion(messages=messages, temperature=1.0, top_p=0.9,
                                               seed=7 + sample, max_tokens=12,
                                               repeat_penalty=1.0)
            expected.append(reply["choices"][0]["message"]["content"])
    finally:
        alone.close()
    assert df["response"].to_list() == expected
    # Each problem's second sample copied the first one's evaluated prompt instead of
    # evaluating it again (BatchedDecoder._first_token), and its reply is still the one alone.
    second = df.filter(pl.col("sample_index") == 1)
    assert summary.prompt_tokens_copied == second["prompt_tokens"].sum() > 0
    # Sampling is in effect: a problem's two samples differ.
    replies = df.group_by("source_id").agg(pl.col("response"))["response"].to_list()
    assert len(replies) == 6 and all(len(set(r)) == 2 for r in replies)
