"""`stairs eval`: any model scored on a curriculum's held-out rows, as a student (no worked
examples) or, with --as-teacher, the way the staircase scores a teacher."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.helpers.tiny_student import save_tiny_base

runner = CliRunner()


def test_eval_as_student_and_as_teacher(tmp_path):
    base = save_tiny_base(tmp_path / "tiny")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": "eval-cli", "corpus": {"format": "demo", "demo": {"rows": 40},
                                        "eval_fraction": 0.2},
        "student": {"eval_max_new_tokens": 3},
        "quantization": {"max_new_tokens": 5}}))
    results = {}
    for flag in ([], ["--as-teacher"]):
        out = runner.invoke(app, ["eval", str(base), "--curriculum", str(path), "--rows", "2",
                                  "--json", *flag])
        assert out.exit_code == 0, out.output
        results[bool(flag)] = json.loads(out.stdout)
    student, teacher = results[False], results[True]
    assert student["n"] == teacher["n"] == 2
    assert student["few_shot"] is False and teacher["few_shot"] is True
    # Each asked with its own decoding budget: at most 3 new tokens per row, and at most 5.
    assert student["generated_tokens"] <= 2 * 3 < teacher["generated_tokens"] <= 2 * 5
