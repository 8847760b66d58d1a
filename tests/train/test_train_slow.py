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


@pytest.mark.slow
def test_kd_topk_through_the_real_llamacpp_server(workspace, tmp_path):
    """generate -> curate -> train with teacher.top_logprobs: 5 from the embedded teacher behind
    llama.cpp's own OpenAI-compatible server; the student (a tiny model on the teacher's
    tokenizer) gets 5 candidates per target token and a KD term that falls."""
    from flows.curate import curate
    from flows.generate import generate
    from flows.ingest import ingest
    from flows.spec import Curriculum
    from flows.train import train
    from tests.helpers.tiny_student import tiny_llama

    _, tok, _ = models.load("smollm2-135m")
    base = tmp_path / "tiny-on-smollm2-vocab"
    tiny_llama(tok, seed=0).save_pretrained(base)
    tok.save_pretrained(base)
    spec = Curriculum.model_validate({
        "name": "kd-topk-real", "corpus": {"format": "demo", "demo": {"rows": 30, "seed": 4}},
        "teacher": {"backend": "llamacpp", "model": "smollm2-135m", "temperature": 0.0,
                    "max_tokens": 48, "top_logprobs": 5},
        "generate": {"max_rows": 6},
        # The 135M teacher is often wrong; what is tested here is the logprob path, not answers.
        "curation": {"require_gold_match": False, "decontaminate": {"enabled": False},
                     "near_dedup": {"enabled": False}},
        "student": {"base": str(base), "objective": "kd", "kd_top_k": 5, "max_steps": 12,
                    "batch_size": 2, "learning_rate": 2e-2, "warmup_ratio": 0.0,
                    "eval_rows": 1, "eval_max_new_tokens": 2, "evaluate_base": False}})
    run_id = workspace.start_run(spec, "run").id
    ingest(spec, workspace, run_id)
    assert generate(spec, workspace, run_id, progress_bar=False).complete
    assert curate(spec, workspace, run_id).kept >= 2
    rows = workspace.store.table(workspace.stage_shards(run_id, "curate", "train",
                                                        round_index=0)).to_pylist()
    built = examples.build(rows, tok, "kd", 384, top_k=5)
    counts = [sum(i >= 0 for i in ex.topk_ids[t]) for g in built.groups for ex in g
              for t, label in enumerate(ex.labels) if label >= 0 and label != tok.eos_token_id]
    assert counts and max(counts) == 5
    # llama-cpp-python keys a token's alternatives by their text, so two ids that decode alike
    # (rare, partial UTF-8) collapse into one: nearly every position still has all 5.
    assert sum(c == 5 for c in counts) >= 0.9 * len(counts), counts
    result = train(spec, workspace, run_id)
    first, last = result.loss_terms["kd"]
    assert result.kd_rows == len(built.groups) and first > 0.1 and last < first


@pytest.mark.slow
def test_on_policy_through_the_real_llamacpp_server(workspace):
    """The embedded student samples; the embedded teacher behind llama.cpp's server scores the
    very token ids it sampled (/v1/completions, prompt as ids, echo, logprobs) and the teacher's
    echoed tokens line up with the student's."""
    from flows.curate import curate
    from flows.generate import generate
    from flows.ingest import ingest
    from flows.spec import Curriculum
    from flows.train import train

    spec = Curriculum.model_validate({
        "name": "on-policy-real", "corpus": {"format": "demo", "demo": {"rows": 30, "seed": 4}},
        "teacher": {"backend": "llamacpp", "model": "smollm2-135m", "temperature": 0.0,
                    "max_tokens": 48},
        "generate": {"max_rows": 4},
        "curation": {"require_gold_match": False, "decontaminate": {"enabled": False},
                     "near_dedup": {"enabled": False}},
        "student": {"base": "smollm2-135m", "objective": "on_policy", "kd_top_k": 5,
                    "on_policy_max_tokens": 16, "max_steps": 2, "batch_size": 2,
                    "eval_rows": 1, "eval_max_new_tokens": 2, "evaluate_base": False}})
    run_id = workspace.start_run(spec, "run").id
    ingest(spec, workspace, run_id)
    assert generate(spec, workspace, run_id, progress_bar=False).complete
    assert curate(spec, workspace, run_id).kept >= 2
    result = train(spec, workspace, run_id)
    assert result.on_policy_samples == 4 and result.misaligned_samples == 0
    assert result.teacher_requests == 4 and result.teacher_tokens > 4 * 16
    assert set(result.loss_terms) == {"reverse_kl"}
    assert all(0 < v < 20 for v in result.loss_terms["reverse_kl"])
