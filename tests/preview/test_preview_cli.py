"""`stairs preview` and `stairs prompts compare` through the CLI against the loopback fake OpenAI
server: what a preview keeps is what a generate + curate run of the same rows keeps."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.prompting import default_prompts_dir
from tests.helpers.gen_helpers import demo_jsonl
from tests.helpers.openai_server import FakeOpenAI

runner = CliRunner()


def curriculum(folder: Path, base_url: str, *, max_rows: int = 8, **sections) -> Path:
    corpus = demo_jsonl(folder / "corpus.jsonl", 40, seed=5)
    doc = {"name": "preview-test",
           # A held-out split, so decontamination has eval rows to compare with.
           "corpus": {"path": corpus.name, "format": "jsonl", "eval_fraction": 0.25},
           "teacher": {"backend": "openai", "model": "fake", "base_url": base_url,
                       "concurrency": 4, "max_retries": 2},
           "generate": {"max_rows": max_rows, "batch_rows": 4}, **sections}
    path = folder / "curriculum.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def train_questions(path: Path, n: int) -> list[str]:
    from flows.ingest import read_rows
    from flows.spec import load

    kept, _ = read_rows(load(path))
    return [r["question"] for r in kept if r["split"] == "train"][:n]


def prepend_contaminated_row(path: Path) -> None:
    """Put first in the corpus a train row that repeats a held-out row's passage (with a
    sentence added, so it is a row of its own): curation must drop it as contaminated."""
    from flows.ingest import read_rows
    from flows.ingest.rows import content_id, split_of
    from flows.spec import load

    spec = load(path)
    held_out = next(r for r in read_rows(spec)[0] if r["split"] == "eval")
    for i in range(100):  # a variant that ingest's id-based split puts in train
        row = {"passage": f"{held_out['passage']} Note {i}.", "question": held_out["question"],
               "answer": held_out["answer"]}
        if split_of(content_id(row["passage"], row["question"], row["answer"]),
                    spec.corpus.eval_fraction) == "train":
            break
    corpus = spec.resolve(spec.corpus.path)
    corpus.write_text(json.dumps(row) + "\n" + corpus.read_text())


def invoke(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_preview_keeps_what_generate_and_curate_keep(tmp_path, workspace):
    from flows.curate import curate
    from flows.generate import generate
    from flows.preflight import load_checked

    with FakeOpenAI() as srv:
        path = curriculum(tmp_path, srv.base_url)
        prepend_contaminated_row(path)
        q = train_questions(path, 8)
        # Planted: a wrong answer, a reply with no answer line, a refusal.
        srv.script = {q[1]: ("Adding them gives 999.\nAnswer: 999", "stop"),
                      q[3]: ("I think it is a lot of them.", "stop"),
                      q[5]: ("I'm sorry, but I can't help with that.", "stop")}
        doc = invoke("preview", str(path), "--n", "8")
        sent_by_preview = sum(srv.received.values())

        spec = load_checked(path)
        run_id = workspace.start_run(spec, "generate").id
        gen = generate(spec, workspace, run_id, progress_bar=False)
        cur = curate(spec, workspace, run_id)

    # The same requests: every one the run needed was answered from the cache preview filled.
    assert sent_by_preview == gen.requests == 8 and gen.cache_hits == 8 and gen.sent == 0
    assert sum(srv.received.values()) == 8

    stage = workspace.latest_stage("curate", run_id=run_id)
    curated = pl.concat([workspace.store.scan(workspace.shards(stage, kind)).collect()
                         for kind in ("kept", "dropped")], how="diagonal_relaxed")
    verdicts = {r["id"]: "kept" if r["keep"] else r["drop_reason"]
                for r in curated.iter_rows(named=True)}
    assert {r["id"]: r["verdict"] for r in doc["rows"]} == verdicts

    m = doc["measures"]
    assert (m["rows"], m["kept"]) == (cur.generated, cur.kept) == (8, 4)
    assert m["drops_by_reason"] == cur.drops_by_reason
    by_row = {r["row"]: r for r in doc["rows"]}
    assert [by_row[i]["question"] for i in range(1, 9)] == q
    assert by_row[1]["verdict"] == "contaminated" and by_row[1]["answer"] == by_row[1]["gold"]
    assert by_row[2]["verdict"] == "wrong_answer" and by_row[2]["answer"] == "999"
    assert by_row[4]["verdict"] == "generation_error:no_answer"
    assert by_row[6]["verdict"] == "generation_error:refused"
    assert (m["parsed"], m["parse_rate"]) == (6, 0.75)
    assert (m["correct"], m["with_gold"], m["accuracy"]) == (5, 8, 0.625)  # kept + contaminated
    assert m["prompt_tokens"] == gen.cached_prompt_tokens > 0
    assert m["completion_tokens"] == gen.cached_completion_tokens > 0
    assert m["sent"] == 8 and m["cache_hits"] == 0 and m["seconds"] >= 0

    # The table people read: one line per row, the measures under it.
    with FakeOpenAI() as srv:
        table = runner.invoke(app, ["preview", str(path), "--n", "3"])
        assert table.exit_code == 0, table.output
        assert srv.received == {}  # all three from the response cache
    assert "wrong_answer" in table.stdout and q[0][:40] in table.stdout
    assert "3 rows from 3 corpus rows: parsed 3 (100%), kept 1 (33%)" in table.stdout


def test_preview_names_a_bad_template_and_an_unreachable_teacher(tmp_path):
    path = curriculum(tmp_path, "http://127.0.0.1:9/v1")
    missing = runner.invoke(app, ["preview", str(path), "--template", "nope"])
    assert missing.exit_code == 2 and "no template 'nope'" in missing.output
    down = runner.invoke(app, ["preview", str(path), "--n", "1"])
    assert down.exit_code == 3 and "teacher unreachable" in down.output


def planted_template(folder: Path) -> Path:
    """The shipped rationale template with one sentence added to its last user message; the fake
    teacher answers every prompt carrying that sentence wrongly."""
    doc = yaml.safe_load((default_prompts_dir() / "rationale.yaml").read_text())
    doc["messages"][-1]["content"] = "Answer fast.\n" + doc["messages"][-1]["content"]
    path = folder / "fast.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_compare_reports_the_planted_difference(tmp_path):
    with FakeOpenAI(script={"Answer fast.": ("Quick guess.\nAnswer: 0", "stop")}) as srv:
        path = curriculum(tmp_path, srv.base_url, max_rows=None)
        planted = planted_template(tmp_path)
        doc = invoke("prompts", "compare", str(path), "rationale", str(planted), "--n", "6")
        text = runner.invoke(app, ["prompts", "compare", str(path), "rationale", str(planted),
                                   "--n", "6"])
    a, b = doc["a"], doc["b"]
    assert (a["template"], b["template"]) == ("rationale", "fast")
    assert a["template_hash"] != b["template_hash"]
    assert (a["measures"]["kept"], a["measures"]["accuracy"]) == (6, 1.0)
    assert (b["measures"]["kept"], b["measures"]["accuracy"]) == (0, 0.0)
    assert b["measures"]["drops_by_reason"] == {"wrong_answer": 6}
    assert [d["row"] for d in doc["disagree"]] == [1, 2, 3, 4, 5, 6]
    first = doc["disagree"][0]
    assert first["a"]["verdict"] == "kept" and first["a"]["answer"] == first["gold"]
    assert first["b"] == {"answer": "0", "verdict": "wrong_answer",
                          "reply": "Quick guess.\nAnswer: 0"}
    assert text.exit_code == 0 and "6 row(s) where they disagree" in text.stdout


def test_compare_sides_can_be_curriculum_keys(tmp_path):
    with FakeOpenAI() as srv:
        path = curriculum(tmp_path, srv.base_url)
        doc = invoke("prompts", "compare", str(path), "teacher.temperature=0.0",
                     "teacher.temperature=1.5,teacher.samples=2", "--n", "2")
    assert doc["a"]["measures"]["requests"] == 2 and doc["b"]["measures"]["requests"] == 4
    # The fake answers alike whatever the sampling: B's second samples are new rows, and of
    # each pair of identical replies curation keeps one and drops the other as a duplicate.
    keys = [(d["row"], d["sample"]) for d in doc["disagree"]]
    assert {(1, 1), (2, 1)} <= set(keys)
    assert all(d["a"]["verdict"] is None or d["b"]["verdict"] == "duplicate"
               for d in doc["disagree"])
    assert sorted(r["verdict"] for r in doc["b"]["rows"]) == ["duplicate", "duplicate", "kept",
                                                             "kept"]
    bad = runner.invoke(app, ["prompts", "compare", str(path), "rationale",
                              "teacher.temperature=9"])
    assert bad.exit_code == 2 and "teacher.temperature: Input should be less than or equal " \
                                  "to 2" in bad.output


@pytest.mark.parametrize("ref, changes", [
    ("rationale", {"generate.template": "rationale"}),
    ("drafts/v2.yaml", {"generate.template": "v2",
                        "generate.prompts_dir": str(Path("drafts").resolve())}),
    ("teacher.model=big,teacher.temperature=0.5",
     {"teacher.model": "big", "teacher.temperature": 0.5}),
])
def test_variant_changes(ref, changes):
    from flows.preview.compare import variant_changes

    assert variant_changes(ref) == changes
