"""The real embedded student (SmolLM2-135M-Instruct, from its GGUF) learns demo rows."""

from __future__ import annotations

import json
import re

import pytest

from flows import models
from flows.evaluate.score import target_loss
from flows.ingest import demo
from flows.prompting import load_template
from flows.train import examples
from flows.train.trainer import TrainConfig, fit, prepare


def demo_rationale(row: dict) -> str:
    """A worked solution of a 'sum' demo row from its own passage (the first person's facts)."""
    first = row["passage"].split(". ")[0].rstrip(".") + "."
    counts = re.findall(r"\d+", first)
    return f"{first} {' + '.join(counts)} = {sum(map(int, counts))}."


@pytest.mark.slow
def test_real_student_eval_loss_goes_down_after_a_few_steps():
    template = load_template("rationale")
    rows = []
    for i, r in enumerate(demo.generate(8, seed=5)):
        assert demo_rationale(r).endswith(f"= {r['answer']}.")
        rows.append({"id": f"d{i}", **r, "rationale": demo_rationale(r),
                     "messages": json.dumps(template.render(r))})
    model, tok, _ = models.load("smollm2-135m")
    before = target_loss(model, tok, rows, template)["loss"]
    cfg = TrainConfig(objective="cot", max_steps=6, batch_size=4, learning_rate=1e-4,
                      warmup_ratio=0.0, max_length=384)
    groups = examples.build(rows, tok, "cot", cfg.max_length).groups
    result = fit(prepare(model, cfg), groups, cfg, pad_id=tok.pad_token_id, progress=False)
    after = target_loss(model, tok, rows, template)["loss"]
    assert result.steps == 6
    assert after < before - 0.1, (before, after)
