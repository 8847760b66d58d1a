"""`stairs prompts list|render` and the `stairs validate` pre-flight for generate.template."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.preflight import load_checked as load
from flows.spec import SpecError

runner = CliRunner()

DEMO = """\
name: t
corpus:
  format: demo
  demo: {rows: 20, tasks: [sum, lookup]}
"""


def curriculum(tmp_path, body=DEMO, extra=""):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(body) + textwrap.dedent(extra), encoding="utf-8")
    return path


def test_prompts_list_shows_shipped_templates():
    result = runner.invoke(app, ["prompts", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert {"rationale", "disentangle", "textbook", "judge"} <= set(rows)
    assert rows["rationale"]["needs"] == ["passage", "question"]
    assert all(r["error"] is None for r in rows.values())


def test_prompts_list_flags_a_broken_template(tmp_path):
    (tmp_path / "bad.yaml").write_text("description: x\nneeds: []\noutput: nope\nmessages: []\n")
    result = runner.invoke(app, ["prompts", "list", "--prompts-dir", str(tmp_path), "--json"])
    [row] = json.loads(result.stdout)
    assert row["name"] == "bad" and "unknown parser 'nope'" in row["error"]
    assert runner.invoke(app, ["prompts", "list", "--prompts-dir", str(tmp_path)]).exit_code == 1


def test_prompts_render_real_corpus_rows(tmp_path):
    path = curriculum(tmp_path)
    result = runner.invoke(app, ["prompts", "render", "rationale", "--curriculum", str(path),
                                 "--n", "3", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["template"] == "rationale" and len(doc["rows"]) == 3
    from flows.ingest import demo

    expected = list(demo.generate(3, tasks=["sum", "lookup"]))
    for r, src in zip(doc["rows"], expected):
        user = r["messages"][-1]["content"]
        assert src["passage"] in user and src["question"] in user
        assert len(r["row_id"]) == 16
    text = runner.invoke(app, ["prompts", "render", "textbook", "-c", str(path), "--n", "1"])
    assert text.exit_code == 0 and expected[0]["passage"] in text.stdout


def test_prompts_render_jsonl_corpus_and_template_error(tmp_path):
    rows = [{"passage": "Ana has 2 cats.", "question": "How many cats?", "answer": "2"},
            {"passage": "Bo has 5 dogs.", "question": "How many dogs?", "answer": "5"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    path = curriculum(tmp_path, "name: t\ncorpus: {path: c.jsonl}\n")
    result = runner.invoke(app, ["prompts", "render", "rationale", "-c", str(path), "--json"])
    doc = json.loads(result.stdout)
    assert [r["line"] for r in doc["rows"]] == [1, 2]
    missing = runner.invoke(app, ["prompts", "render", "nope", "-c", str(path)])
    assert missing.exit_code == 2 and "no template 'nope'" in missing.output


def test_validate_accepts_the_default_template(tmp_path):
    result = runner.invoke(app, ["validate", str(curriculum(tmp_path))])
    assert result.exit_code == 0, result.output


def test_validate_fails_on_unknown_template(tmp_path):
    path = curriculum(tmp_path, extra="generate: {template: rationel}\n")
    with pytest.raises(SpecError, match=r"generate\.template: .*no template 'rationel'"):
        load(path)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "generate.template" in result.output


def test_validate_fails_when_corpus_lacks_a_needed_field(tmp_path):
    # A plain-text corpus has passages only; the rationale template needs a question.
    (tmp_path / "book.txt").write_text("Ana has 2 cats.\n\nBo has 5 dogs.\n")
    path = curriculum(tmp_path, "name: t\ncorpus: {path: book.txt, format: text}\n")
    with pytest.raises(SpecError, match=r"generate\.template: template 'rationale' needs "
                                        r"'question', which corpus rows \(format text\)"):
        load(path)
    ok = curriculum(tmp_path, "name: t\ncorpus: {path: book.txt, format: text}\n"
                              "generate: {template: textbook}\n")
    assert load(ok).generate.template == "textbook"


def test_validate_fails_on_template_that_breaks_at_render(tmp_path):
    prompts = tmp_path / "my_prompts"
    prompts.mkdir()
    (prompts / "strict.yaml").write_text(textwrap.dedent("""\
        description: uses a meta key the demo rows do not have
        needs: [question, meta]
        output: rationale
        messages:
          - role: user
            content: "{{ question }} ({{ meta.difficulty }})"
        """))
    (prompts / "broken.yaml").write_text(textwrap.dedent("""\
        description: syntax error
        needs: [question]
        output: rationale
        messages:
          - role: user
            content: "{% if question %}{{ question }}"
        """))
    base = DEMO + "generate:\n  prompts_dir: my_prompts\n"
    strict = curriculum(tmp_path, base + "  template: strict\n")
    with pytest.raises(SpecError, match=r"generate\.template: .*strict\.yaml: row [0-9a-f]{16}: "
                                        r"messages\[0\] \(user\): undefined: .*difficulty"):
        load(strict)
    broken = curriculum(tmp_path, base + "  template: broken\n")
    with pytest.raises(SpecError, match=r"generate\.template: .*broken\.yaml: .*Jinja syntax"):
        load(broken)
    nodir = curriculum(tmp_path, DEMO + "generate: {prompts_dir: nowhere}\n")
    with pytest.raises(SpecError, match=r"generate\.prompts_dir: not a folder"):
        load(nodir)
