"""Generated rows that follow the "Generated rows" contract (docs/contracts.md) exactly, built from
demo corpus rows with synthetic teacher responses, plus one planted bad row per filter. Curation
tests run against these until the generate flow lands; `write_generate_stage` records them in a
workspace the way the generate stage does (stage "generate", shard kind "generated")."""

from __future__ import annotations

import hashlib
import json
import random
import re

import pyarrow as pa

from flows.generate.rows import GENERATED_SCHEMA  # the generate stage's own schema
from flows.ingest import demo

TEMPLATE_HASH = hashlib.sha256(b"rationale template v1").hexdigest()

# Rationale phrasings: the teacher words its reasoning differently from sample to sample.
PHRASINGS = [
    "The passage says: {fact} Adding the numbers gives {total}.",
    "From the text, {fact} So in total there are {total}.",
    "{fact} We add them up: the sum is {total}.",
    "Reading carefully: {fact} Together that makes {total}.",
]


def _h(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def corpus_rows(n: int, seed: int = 0) -> list[dict]:
    rows = []
    for r in demo.generate(n, seed=seed, tasks=["sum"]):
        rows.append({"id": _h("corpus", r["passage"], r["question"]), **r})
    return rows


def generated_row(src: dict, *, sample_index: int, rationale: str | None, answer: str | None,
                  error: str | None = None, question: str | None = None, round_index: int = 0,
                  **extra) -> dict:
    messages = [{"role": "system", "content": "Solve the problem. End with 'Answer: <answer>'."},
                {"role": "user", "content": f"{src['passage']}\n\nQuestion: {src['question']}"}]
    response = (rationale or "") + (f"\nAnswer: {answer}" if answer is not None else "")
    sampling = {"temperature": 0.8, "max_tokens": 256, "seed": sample_index}
    row = {
        "id": _h(src["id"], TEMPLATE_HASH, sample_index, 0),
        "source_id": src["id"], "round": round_index, "template": "rationale",
        "template_hash": TEMPLATE_HASH, "teacher": "llamacpp:smollm2-135m",
        "sampling": json.dumps(sampling), "request_hash": _h("req", src["id"], sample_index),
        "sample_index": sample_index, "messages": json.dumps(messages),
        "passage": src["passage"], "gold_answer": src["answer"],
        "question": question if question is not None else src["question"], "facts": None,
        "rationale": rationale, "answer": answer, "response": response,
        "finish_reason": "stop", "prompt_tokens": 60, "completion_tokens": 40,
        "error": error, "logprobs": None,
    }
    row.update(extra)
    return row


def good_rationale(src: dict, phrasing: int = 0, total: str | None = None) -> str:
    fact = src["passage"].split(". ")[0].rstrip(".") + "."
    return PHRASINGS[phrasing % len(PHRASINGS)].format(fact=fact, total=total or src["answer"])


def teacher_rows(sources: list[dict], *, samples: int = 4, p_correct: float = 0.6,
                 seed: int = 0) -> list[dict]:
    """n samples per source: correct ones in varied phrasings, wrong ones off by one or two."""
    rng = random.Random(seed)
    rows = []
    for src in sources:
        for k in range(samples):
            if rng.random() < p_correct:
                answer = src["answer"]
            else:
                answer = str(int(src["answer"]) + rng.choice([-2, -1, 1, 2]))
            rows.append(generated_row(src, sample_index=k, answer=answer,
                                      rationale=good_rationale(src, rng.randrange(4), answer)))
    return rows


def planted(src: dict) -> dict[str, dict]:
    """One row per filter that must drop it, keyed by the expected drop reason."""
    ans = src["answer"]
    ok = good_rationale(src)
    k = iter(range(100, 200))
    return {
        "generation_error:parse_error": generated_row(
            src, sample_index=next(k), rationale=None, answer=None, error="parse_error"),
        "generation_error:request_failed": generated_row(
            src, sample_index=next(k), rationale=None, answer=None,
            error="request_failed: HTTP 500"),
        "no_answer": generated_row(src, sample_index=next(k), rationale=ok, answer=None),
        "too_short": generated_row(src, sample_index=next(k), rationale="So.", answer=ans),
        "too_long": generated_row(src, sample_index=next(k),
                                  rationale=ok + " Let me restate it plainly." + " x" * 3000,
                                  answer=ans),
        "garbage": generated_row(src, sample_index=next(k),
                                 rationale="\x00\x01\x02\x03\ufffd\ufffd{}|~^" * 6 + f" {ans}",
                                 answer=ans),
        "repetition": generated_row(src, sample_index=next(k),
                                    rationale=f"the total is {ans} " * 12, answer=ans),
        "answer_leaked": generated_row(src, sample_index=next(k), rationale=ok, answer=ans,
                                       question=src["question"] + f" (Answer: {ans})"),
        "wrong_answer": generated_row(src, sample_index=next(k),
                                      rationale=good_rationale(src, 1, str(int(ans) + 3)),
                                      answer=str(int(ans) + 3)),
        "rationale_unsupported": generated_row(
            src, sample_index=next(k), rationale="I counted every item in the passage carefully.",
            answer=ans),
        # The step that gives the answer is wrong: "3 + 5 = 9. So the answer is 8."
        "arithmetic_error": generated_row(
            src, sample_index=next(k), rationale=f"{ok} {numbers(src)[0]} + {numbers(src)[1]} = "
            f"{numbers(src)[0] + numbers(src)[1] + 1}. So the answer is {ans}.", answer=ans),
        # Right arithmetic with a number the passage never gave (nor an earlier step).
        "unsupported_number": generated_row(
            src, sample_index=next(k), rationale=f"{ok} 1000 + {int(ans)} = {1000 + int(ans)}, "
            f"minus 1000 is {ans}.", answer=ans),
    }


def numbers(src: dict) -> list[int]:
    """The counts the passage's first fact states."""
    return [int(n) for n in re.findall(r"\d+", src["passage"].split(". ")[0])] + [1, 2]


def table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, GENERATED_SCHEMA)


def write_generate_stage(ws, run_id: str, rows: list[dict], *, round_index: int = 0):
    """Record a completed generate stage holding `rows` (as the generate flow would)."""
    ingest = ws.latest_stage("ingest", run_id=run_id)
    parents = ws.shards(ingest, "corpus") if ingest is not None else []
    with ws.stage(run_id, "generate", round_index=round_index,
                  fingerprint=_h("gen", run_id, round_index, len(rows))) as st:
        ws.store.write(table(rows), stage=st.stage, kind="generated", parents=parents)
        st.summary.update({"rows": len(rows)})
    return st.stage
