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
    very tokens it sampled (/v1/completions, echo, logprobs), and the echoed tokens line up with
    the student's. The in-process scorer (same GGUF) gives the server's numbers."""
    import pyarrow as pa

    from flows.spec import Curriculum
    from flows.teachers import make_teacher, running
    from flows.train import train
    from flows.train.onpolicy import CompletionsScorer, GGUFScorer, Sample
    from tests.helpers.tiny_student import train_rows

    spec = Curriculum.model_validate({
        "name": "on-policy-real", "corpus": {"format": "demo"},
        "teacher": {"backend": "llamacpp", "model": "smollm2-135m"},
        "student": {"base": "smollm2-135m", "objective": "on_policy", "kd_top_k": 5,
                    "on_policy_max_tokens": 16, "max_steps": 1, "batch_size": 2,
                    "eval_rows": 1, "eval_max_new_tokens": 2, "evaluate_base": False}})
    # Curated rows as curate writes them, with short (zero-shot) teacher messages: the server
    # computes echo logprobs in Python, ~40 ms per echoed token (onpolicy.GGUFScorer says why).
    run_id = workspace.start_run(spec, "run").id
    with workspace.stage(run_id, "curate", round_index=0) as st:
        workspace.store.write(pa.Table.from_pylist(train_rows(2)), stage=st.stage, kind="train")

    _, tok, _ = models.load("smollm2-135m")
    prompt = ("<|im_start|>user\nVorla has 3 red and 5 blue lanterns. How many in total?"
              "<|im_end|>\n<|im_start|>assistant\n")
    ids = tok("3 + 5 = 8.\nAnswer: 8", add_special_tokens=False)["input_ids"]
    sample = Sample(ids, [tok.decode([i]) for i in ids], tok.decode(ids))
    with running(make_teacher(spec.teacher, endpoint=True)) as teacher:
        served = CompletionsScorer(teacher.base_url, "smollm2-135m", "none", 5)
        from_server = served.score(prompt, sample)
        served.close()
    local = GGUFScorer(models.resolve_model("smollm2-135m"), 5)
    in_process = local.score(prompt, sample)
    local.close()
    assert from_server is not None and len(from_server) == len(in_process) == len(ids)
    for a, b in zip(from_server, in_process):  # same best token, same logprob
        assert a[0][0] == b[0][0] and abs(a[0][1] - b[0][1]) < 0.05, (a, b)

    result = train(spec, workspace, run_id)
    assert result.on_policy_samples == 2 and result.misaligned_samples == 0
    assert result.teacher_requests == 2 and result.teacher_tokens > 2 * 16
    assert set(result.loss_terms) == {"reverse_kl"}
    assert all(0 < v < 20 for v in result.loss_terms["reverse_kl"])
