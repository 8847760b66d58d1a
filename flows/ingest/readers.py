"""Corpus readers: each yields (source line or row number, record or None, error or None).

JSONL, CSV and plain text are read line by line on purpose: one bad line (invalid UTF-8, broken
JSON) must become a reject naming its line, while a whole-file reader (pyarrow's JSON reader,
which `datasets` uses) fails the file at the first bad byte. Parquet and saved Hugging Face
datasets are typed already and go through `datasets`.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterator

Record = tuple[int, dict | None, str | None, str]  # (line, record, error, raw text for rejects)


def _decoded_lines(path: Path) -> Iterator[tuple[int, str | None, bytes]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8"), raw
            except UnicodeDecodeError:
                yield lineno, None, raw


def read_jsonl(path: Path) -> Iterator[Record]:
    for lineno, text, raw in _decoded_lines(path):
        if text is None:
            yield lineno, None, "invalid_utf8", raw.decode("utf-8", "replace")
            continue
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            yield lineno, None, f"invalid_json: {e.msg}", text
            continue
        if not isinstance(obj, dict):
            yield lineno, None, "not_an_object", text
            continue
        yield lineno, obj, None, text


def read_csv(path: Path) -> Iterator[Record]:
    header: list[str] | None = None
    for lineno, text, raw in _decoded_lines(path):
        if text is None:
            yield lineno, None, "invalid_utf8", raw.decode("utf-8", "replace")
            continue
        if not text.strip():
            continue
        # Parse line by line so the line number is exact; quoted fields spanning lines are not
        # supported (they would need the whole file decoded before any row could be rejected).
        cells = next(csv.reader(io.StringIO(text)))
        if header is None:
            header = cells
            continue
        if len(cells) != len(header):
            yield lineno, None, f"wrong_column_count: {len(cells)} != {len(header)}", text
            continue
        yield lineno, dict(zip(header, cells)), None, text


def read_text(path: Path) -> Iterator[Record]:
    """Plain text: one passage per paragraph (blank-line separated); line = first line of it."""
    para: list[str] = []
    start = 0
    for lineno, text, raw in _decoded_lines(path):
        if text is None:
            yield lineno, None, "invalid_utf8", raw.decode("utf-8", "replace")
            continue
        if text.strip():
            if not para:
                start = lineno
            para.append(text.rstrip("\n"))
        elif para:
            yield start, {"passage": "\n".join(para)}, None, "\n".join(para)
            para = []
    if para:
        yield start, {"passage": "\n".join(para)}, None, "\n".join(para)


def read_datasets(path: Path, fmt: str) -> Iterator[Record]:
    import datasets

    if fmt == "parquet":
        ds = datasets.Dataset.from_parquet(str(path))
    else:
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = datasets.concatenate_datasets(list(ds.values()))
    for i, row in enumerate(ds, start=1):
        yield i, row, None, ""


def read_corpus(path: Path, fmt: str) -> Iterator[Record]:
    if fmt == "jsonl":
        return read_jsonl(path)
    if fmt == "csv":
        return read_csv(path)
    if fmt == "text":
        return read_text(path)
    if fmt in ("parquet", "hf"):
        return read_datasets(path, fmt)
    raise ValueError(f"unsupported corpus format {fmt!r}")


def source_records(spec):
    """(source name, line, record, error, raw) for every record of the curriculum's corpus: the
    demo generator's rows, or the corpus file through read_corpus."""
    from flows.ingest import demo

    corpus = spec.corpus
    if corpus.format == "demo":
        d = corpus.demo
        rows = demo.generate(d.rows, seed=d.seed, people=d.people, colors=d.colors,
                             max_count=d.max_count, tasks=d.tasks)
        for i, row in enumerate(rows, start=1):
            yield "demo", i, row, None, ""
        return
    path = spec.resolve(corpus.path)
    for line, record, error, raw in read_corpus(path, corpus.format):
        yield path.name, line, record, error, raw
