"""Ingest: every supported format, every kind of bad row, the held-out split, reuse."""

import json
from pathlib import Path

import datasets
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from flows.ingest import ingest
from flows.ingest.rows import content_id, split_of
from flows.spec import load

GOOD = [
    {"passage": "Vorla has 3 red kites.", "question": "How many kites?", "answer": "3"},
    {"passage": "Kathu has 2 blue shells and 1 red shell.", "question": "How many shells?",
     "answer": 3},
    {"passage": "Mirul has 5 stones.", "question": "How many stones?", "answer": "5",
     "source_url": "x"},
]


def curriculum(tmp_path: Path, corpus: dict, **extra) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "corpus": corpus, **extra}))
    return path


def run_ingest(ws, path: Path):
    spec = load(path)
    run = ws.start_run(spec, "ingest")
    summary = ingest(spec, ws, run.id)
    stage = ws.catalog.stages(run.id)[0]
    frames = {k: ws.store.scan(ws.shards(stage, k)).collect() for k in ("corpus", "eval", "rejects")}
    return summary, frames, run


def all_rows(frames):
    return pl.concat([frames["corpus"], frames["eval"]])


def test_jsonl_with_every_kind_of_bad_row(workspace, tmp_path):
    lines = [json.dumps(r).encode() for r in GOOD]
    lines += [
        b'{"question": "q", "answer": "1"}',                          # 4 missing passage
        b'{"passage": ["a", "list"], "question": "q", "answer": "1"}',  # 5 wrong type
        b'{"passage": "   ", "question": "q", "answer": "1"}',          # 6 empty text
        b'{"passage": "caf\xe9", "question": "q", "answer": "1"}',      # 7 invalid utf-8
        json.dumps({"passage": "y" * 5000, "question": "q", "answer": "1"}).encode(),  # 8 long
        b'{"passage": "broken json',                                    # 9
        json.dumps(GOOD[0]).encode(),                                   # 10 duplicate of 1
        b'["not", "an", "object"]',                                     # 11
        b'{"passage": "fine", "question": "q"}',                        # 12 missing answer
    ]
    (tmp_path / "c.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    summary, frames, _ = run_ingest(workspace, curriculum(
        tmp_path, {"path": "c.jsonl", "max_chars": 1000, "eval_fraction": 0.0}))
    rejects = {r["line"]: (r["reason"], r["field"]) for r in frames["rejects"].to_dicts()}
    assert rejects == {
        4: ("missing_field", "passage"), 5: ("wrong_type", "passage"),
        6: ("empty_text", "passage"), 7: ("invalid_utf8", None), 8: ("too_long", "passage"),
        9: ("invalid_json", None), 10: ("duplicate", None), 11: ("not_an_object", None),
        12: ("missing_field", "answer"),
    }
    assert summary.rejected == 9 and summary.train_rows == 3
    assert summary.rejects_by_reason["missing_field"] == 2
    rows = frames["corpus"].sort("line").to_dicts()
    assert [r["line"] for r in rows] == [1, 2, 3]
    assert rows[1]["answer"] == "3"  # numbers become text
    assert json.loads(rows[2]["meta"]) == {"source_url": "x"}
    assert rows[0]["id"] == content_id(GOOD[0]["passage"], GOOD[0]["question"], "3")


@pytest.mark.parametrize("fmt", ["csv", "parquet", "hf"])
def test_tabular_formats_and_column_mapping(workspace, tmp_path, fmt):
    records = [{"ctx": r["passage"], "q": r["question"], "gold": str(r["answer"])} for r in GOOD]
    if fmt == "csv":
        pl.DataFrame(records).write_csv(tmp_path / "c.csv")
        path = "c.csv"
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(records), tmp_path / "c.parquet")
        path = "c.parquet"
    else:
        datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "ds"))
        path = "ds"
    summary, frames, _ = run_ingest(workspace, curriculum(tmp_path, {
        "path": path, "format": fmt, "eval_fraction": 0.0,
        "columns": {"passage": "ctx", "question": "q", "answer": "gold"}}))
    assert summary.train_rows == 3 and summary.rejected == 0
    assert sorted(frames["corpus"]["answer"].to_list()) == ["3", "3", "5"]


def test_csv_bad_lines(workspace, tmp_path):
    (tmp_path / "c.csv").write_bytes(
        b"passage,question,answer\nok text,q,1\nonly,two\n\xff\xfe,q,2\n,q,3\n")
    _, frames, _ = run_ingest(workspace, curriculum(tmp_path, {"path": "c.csv", "format": "csv"}))
    reasons = {r["line"]: r["reason"] for r in frames["rejects"].to_dicts()}
    assert reasons == {3: "wrong_column_count", 4: "invalid_utf8", 5: "empty_text"}
    assert all_rows(frames).height == 1


def test_plain_text_paragraphs(workspace, tmp_path):
    (tmp_path / "c.txt").write_text("First para\nstill first.\n\nSecond one.\n\n\nThird.\n")
    summary, frames, _ = run_ingest(workspace, curriculum(
        tmp_path, {"path": "c.txt", "format": "text", "eval_fraction": 0.0},
        generate={"template": "textbook"}))
    rows = frames["corpus"].sort("line").to_dicts()
    assert [(r["line"], r["passage"]) for r in rows] == [
        (1, "First para\nstill first."), (4, "Second one."), (7, "Third.")]
    assert rows[0]["question"] is None


def test_eval_split_is_stable_and_disjoint(workspace):
    path = Path(__file__).resolve().parents[2] / "curricula" / "quickstart.yaml"
    summary, frames, run = run_ingest(workspace, path)
    train, evals = frames["corpus"], frames["eval"]
    assert set(train["id"]).isdisjoint(set(evals["id"]))
    assert 0.1 < evals.height / (train.height + evals.height) < 0.3
    assert all(split_of(i, 0.2) == "eval" for i in evals["id"])
    assert summary.rows_read == train.height + evals.height


def test_identical_ingest_is_reused(workspace):
    path = Path(__file__).resolve().parents[2] / "curricula" / "quickstart.yaml"
    _, first, run1 = run_ingest(workspace, path)
    spec = load(path)
    run2 = workspace.start_run(spec, "ingest")
    ingest(spec, workspace, run2.id)
    stage2 = workspace.catalog.stages(run2.id)[0]
    assert stage2.reused_from_id is not None
    assert stage2.started_at == stage2.finished_at  # no time spent in this run
    again = workspace.store.scan(workspace.shards(stage2, "corpus")).collect()
    assert again.equals(first["corpus"])


def test_eval_cap(workspace, tmp_path):
    path = curriculum(tmp_path, {"format": "demo", "demo": {"rows": 200}, "eval_fraction": 0.5,
                                 "eval_max_rows": 10})
    summary, frames, _ = run_ingest(workspace, path)
    assert summary.eval_rows == 10 and summary.train_rows == 190


# -- issue 19, finding 7: corpus edge cases ------------------------------------------------------
BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_byte_order_mark_is_not_data(workspace, tmp_path, fmt):
    body = (b"passage,question,answer\nVorla has 3 kites.,How many kites?,3\n" if fmt == "csv"
            else json.dumps(GOOD[0]).encode() + b"\n")
    (tmp_path / f"c.{fmt}").write_bytes(BOM + body)
    path = curriculum(tmp_path, {"path": f"c.{fmt}", "format": fmt, "eval_fraction": 0.0})
    summary, frames, _ = run_ingest(workspace, path)
    assert summary.rejected == 0 and summary.train_rows == 1
    assert frames["corpus"]["line"].to_list() == [1 if fmt == "jsonl" else 2]
    from flows.preflight import problems

    assert problems(load(path)) == []  # validate used to blame generate.template


def test_csv_quoted_fields_span_lines_rfc_4180(workspace, tmp_path):
    (tmp_path / "c.csv").write_bytes(
        b'passage,question,answer\r\n'
        b'"Vorla has 3 kites,\r\nand ""2"" more.",How many kites?,5\r\n'
        b'Kathu has 1 shell.,How many shells?,1\r\n'
        b'"never closed,q,2\r\n')
    summary, frames, _ = run_ingest(workspace, curriculum(
        tmp_path, {"path": "c.csv", "format": "csv", "eval_fraction": 0.0}))
    rows = frames["corpus"].sort("line").to_dicts()
    assert [(r["line"], r["passage"]) for r in rows] == [
        (2, 'Vorla has 3 kites,\r\nand "2" more.'), (4, "Kathu has 1 shell.")]
    assert [(r["line"], r["reason"]) for r in frames["rejects"].to_dicts()] == [
        (5, "invalid_csv")]


def test_non_finite_numbers_empty_answers_control_and_bidi_characters_are_rejected(
        workspace, tmp_path):
    lines = [json.dumps(GOOD[0]).encode(),
             b'{"passage": NaN, "question": "q", "answer": "1"}',                 # 2
             b'{"passage": "p", "question": "q", "answer": 1e400}',               # 3
             b'{"passage": "p", "question": "q", "answer": "  "}',                # 4
             json.dumps({"passage": "red \x1b[31mkites", "question": "q",
                         "answer": "1"}).encode(),                                   # 5
             json.dumps({"passage": "p", "question": "q \u202eevil",
                         "answer": "1"}).encode(),                                   # 6
             json.dumps({"passage": "\u05e9\u05dc\u05d5\u05dd \u200f3", "question": "q",
                         "answer": "3"}).encode()]                                   # 7 kept
    (tmp_path / "c.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    summary, frames, _ = run_ingest(workspace, curriculum(
        tmp_path, {"path": "c.jsonl", "eval_fraction": 0.0}))
    rejects = {r["line"]: (r["reason"], r["field"], r["detail"])
               for r in frames["rejects"].to_dicts()}
    assert {k: v[:2] for k, v in rejects.items()} == {
        2: ("not_a_number", "passage"), 3: ("not_a_number", "answer"),
        4: ("empty_text", "answer"), 5: ("invalid_text", "passage"),
        6: ("invalid_text", "question")}
    assert rejects[5][2] == "contains control character U+001B at character 4"
    assert rejects[6][2] == "contains bidirectional control U+202E at character 2"
    assert sorted(frames["corpus"]["line"].to_list()) == [1, 7]  # right-to-left marks stay


def test_validate_names_the_corpus_when_no_row_is_valid(tmp_path):
    (tmp_path / "c.csv").write_text("text,q,a\nVorla has 3 kites.,How many?,3\n")
    from flows.preflight import problems

    found = problems(load(curriculum(tmp_path, {"path": "c.csv", "format": "csv"})))
    assert found == [f"corpus.path: no valid row in {tmp_path / 'c.csv'} (c.csv line 2: "
                     "missing_field passage: no 'passage' (the passage column)), so template "
                     "'rationale' cannot be tried on one"]
