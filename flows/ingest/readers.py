"""Corpus readers: each yields (source line or row number, record or None, error or None).

JSONL and plain text are read line by line on purpose: one bad line (invalid UTF-8, broken JSON)
must become a reject naming its line, while a whole-file reader (pyarrow's JSON reader, which
`datasets` uses) fails the file at the first bad byte. CSV goes through the csv module, which
reads RFC 4180 quoted fields across line breaks; undecodable bytes are carried through it as
surrogate escapes and reject only the record they are in. A UTF-8 byte order mark at the start
of a file is not data and is dropped. Parquet and saved Hugging Face datasets are typed already
and go through `datasets`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

Record = tuple[int, dict | None, str | None, str]  # (line, record, error, raw text for rejects)


BOM = b"\xef\xbb\xbf"


def _decoded_lines(path: Path) -> Iterator[tuple[int, str | None, bytes]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
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
    """RFC 4180 CSV: quoted fields may hold commas, quotes ("") and line breaks; a record's
    line is the line it starts on."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, strict=True)
        header: list[str] | None = None
        start = 1
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as e:  # a stray quote, a quote never closed: this record only
                yield start, None, f"invalid_csv: {e}", ""
                start = reader.line_num + 1
                continue
            line, start = start, reader.line_num + 1
            raw = ",".join(cells)
            if any(_undecodable(c) for c in cells):
                yield line, None, "invalid_utf8", raw.encode("utf-8", "surrogateescape").decode(
                    "utf-8", "replace")
                continue
            if not cells or not "".join(cells).strip():
                continue
            if header is None:
                header = cells
                continue
            if len(cells) != len(header):
                yield line, None, f"wrong_column_count: {len(cells)} != {len(header)}", raw
                continue
            yield line, dict(zip(header, cells)), None, raw


def _undecodable(text: str) -> bool:
    # errors="surrogateescape" turns each byte that is not UTF-8 into U+DC80..U+DCFF.
    return any("\udc80" <= ch <= "\udcff" for ch in text)


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
    demo generator's rows, a real eval set's (flows/ingest/eval_sets.py), or the corpus file
    through read_corpus."""
    from flows.ingest import demo

    corpus = spec.corpus
    if corpus.format == "demo":
        d = corpus.demo
        if d.levels:
            yield from demo.level_records(d.levels, seed=d.seed)
            return
        rows = demo.generate(d.rows, seed=d.seed, people=d.people, colors=d.colors,
                             max_count=d.max_count, tasks=d.tasks)
        for i, row in enumerate(rows, start=1):
            yield "demo", i, row, None, ""
        return
    if corpus.format == "eval_set":
        from flows.ingest.eval_sets import read_eval_set

        for line, record, error, raw in read_eval_set(corpus.eval_set.name,
                                                      numeric_only=corpus.eval_set.numeric_only):
            yield corpus.eval_set.name, line, record, error, raw
        return
    path = spec.resolve(corpus.path)
    for line, record, error, raw in read_corpus(path, corpus.format):
        yield path.name, line, record, error, raw
