"""Student training on a tiny randomly initialized Llama (fast, real transformers components)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from flows.train import examples as ex_mod
from flows.train import losses
from flows.train.trainer import (
    TrainConfig,
    checkpoints,
    collate,
    compute_loss,
    fit,
    keep_target_logits,
    prepare,
)
from tests.helpers.tiny_student import tiny_llama, tiny_tokenizer, train_rows


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_labels_mask_exactly_the_prompt(tok):
    row = train_rows(1)[0]
    messages = json.loads(row["messages"])
    prompt = ex_mod.prompt_ids(tok, messages)
    ex = ex_mod.row_examples(row, tok, "cot", 512)[0]
    assert ex.input_ids[:len(prompt)] == prompt
    assert ex.labels[:len(prompt)] == [losses.IGNORE] * len(prompt)
    target = tok.decode([t for t in ex.labels if t != losses.IGNORE])
    assert target == f"{row['rationale']}\nAnswer: {row['answer']}<|im_end|>"


def test_masked_loss_ignores_prompt_tokens(tok):
    batch = collate([e for g in ex_mod.build(train_rows(2), tok, "cot", 512).groups for e in g],
                    tok.pad_token_id)
    labels = batch["labels"]
    torch.manual_seed(0)
    logits = torch.randn(*labels.shape, len(tok))
    mask = losses.target_mask(labels)

    def loss(lg):
        return losses.masked_mean(losses.token_losses(lg, labels), mask).item()

    before = loss(logits)
    # Position t predicts token t+1: change every prediction of a prompt or padding token.
    ignored = torch.nn.functional.pad(labels[:, 1:] == losses.IGNORE, (0, 1), value=True)
    changed = logits.clone()
    changed[ignored] += 100 * torch.randn_like(changed[ignored])
    assert loss(changed) == pytest.approx(before, abs=1e-6)
    # ...while changing one target prediction does change it.
    b, t = (~ignored).nonzero()[0].tolist()
    changed[b, t, labels[b, t + 1]] += 5.0
    assert loss(changed) < before - 1e-3


def test_step_by_step_loss_is_weighted_sum_of_task_means():
    # Vocabulary of 4; every logit 0 except the target token's, so CE = log(3 + e^L) - L.
    V = 4
    labels = torch.tensor([[-100, 1, 2, 3, -100],      # rationale task: 3 target tokens, L=2
                           [-100, -100, 1, -100, -100]])  # label task: 1 target token, L=0
    task = torch.tensor([[0] * 5, [1] * 5])
    logits = torch.zeros(2, 5, V)
    for t in range(4):
        if labels[0, t + 1] >= 0:
            logits[0, t, labels[0, t + 1]] = 2.0
    ce_r = math.log(3 + math.e ** 2) - 2.0
    ce_l = math.log(4.0)
    per_token = losses.token_losses(logits, labels)
    loss, parts = losses.step_by_step_loss(per_token, labels, task, alpha=0.3)
    assert parts["rationale_loss"] == pytest.approx(ce_r, rel=1e-6)
    assert parts["label_loss"] == pytest.approx(ce_l, rel=1e-6)
    assert loss.item() == pytest.approx(0.3 * ce_l + 0.7 * ce_r, rel=1e-6)
    # Not the pooled token mean (which would weigh the label task 1/4 here).
    assert loss.item() != pytest.approx((3 * ce_r + ce_l) / 4, rel=1e-3)


def test_step_by_step_rows_give_both_tasks(tok):
    groups = ex_mod.build(train_rows(3), tok, "step_by_step", 512).groups
    assert [[e.task for e in g] for g in groups] == [[0, 1]] * 3
    label_ex = groups[0][1]
    assert ex_mod.LABEL_PREFIX.strip() in tok.decode(label_ex.input_ids)
    assert tok.decode([t for t in label_ex.labels if t >= 0]).startswith("Answer: ")


def test_packed_batch_has_the_same_loss_as_padded(tok):
    model = tiny_llama(tok).eval()
    exs = [e for g in ex_mod.build(train_rows(3), tok, "step_by_step", 512).groups for e in g]
    cfg = TrainConfig(objective="step_by_step")
    with torch.no_grad():
        _, padded = compute_loss(model, collate(exs, tok.pad_token_id), cfg)
        _, packed = compute_loss(model, collate(exs, tok.pad_token_id, packing=True,
                                                max_length=1024), cfg)
    for key in ("label_loss", "rationale_loss", "loss"):
        assert packed[key] == pytest.approx(padded[key], abs=1e-5)


def test_bad_row_is_named(tok):
    row = train_rows(1)[0] | {"id": "row-7", "messages": "not json"}
    with pytest.raises(ex_mod.RowError, match="row-7.*messages"):
        ex_mod.build([row], tok, "cot", 512)
    row = train_rows(1)[0] | {"id": "row-8", "rationale": None}
    with pytest.raises(ex_mod.RowError, match="row-8.*rationale"):
        ex_mod.build([row], tok, "cot", 512)
    assert len(ex_mod.build([row], tok, "label", 512).groups) == 1  # label needs no rationale


def test_over_long_prompts_are_skipped_and_counted(tok):
    built = ex_mod.build(train_rows(2), tok, "cot", 20)
    assert built.groups == [] and built.skipped == {"prompt_too_long": 2}


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Crash(RuntimeError):
    pass


def test_checkpoints_wait_for_the_minutes_floor(tok, tmp_path, monkeypatch):
    """checkpoint_every steps, but not sooner than checkpoint_minutes after the previous
    checkpoint or the start: a clock that advances 2 minutes per step with a 5-minute floor
    saves at steps 4 and 8 of 10 (each 8 minutes after the one before), not at 2 or 6 (only 4
    minutes after)."""
    import flows.train.trainer as trainer

    now = [0.0]

    def two_minutes_a_step(step, record):
        now[0] += 120

    monkeypatch.setattr(trainer, "monotonic", lambda: now[0])
    saved = []
    monkeypatch.setattr(trainer, "save_checkpoint",
                        lambda folder, step, *a, **k: saved.append(step))
    groups = ex_mod.build(train_rows(10), tok, "cot", 512).groups
    cfg = TrainConfig(objective="cot", max_steps=10, batch_size=2, checkpoint_every=2,
                      checkpoint_minutes=5)
    fit(tiny_llama(tok, seed=1), groups, cfg, pad_id=tok.pad_token_id, checkpoint_dir=tmp_path,
        progress=False, on_log=two_minutes_a_step, log_every=1)
    assert saved == [4, 8]
    saved.clear()
    fit(tiny_llama(tok, seed=1), groups, cfg.model_copy(update={"checkpoint_minutes": 0}),
        pad_id=tok.pad_token_id, checkpoint_dir=tmp_path, progress=False,
        on_log=two_minutes_a_step, log_every=1)
    assert saved == [2, 4, 6, 8]  # no checkpoint after the last step


def test_resume_continues_from_saved_step_with_identical_results(tok, tmp_path):
    groups = ex_mod.build(train_rows(10), tok, "step_by_step", 512).groups
    cfg = TrainConfig(objective="step_by_step", max_steps=6, batch_size=2, learning_rate=3e-3,
                      checkpoint_every=2, checkpoint_minutes=0, keep_checkpoints=2)
    straight = tiny_llama(tok, seed=1)
    ref = fit(straight, groups, cfg, pad_id=tok.pad_token_id, checkpoint_dir=tmp_path / "a",
              progress=False)

    def crash_at_5(step, record):
        if step == 5:
            raise Crash("simulated crash")

    crashed = tiny_llama(tok, seed=1)
    with pytest.raises(Crash):
        fit(crashed, groups, cfg, pad_id=tok.pad_token_id, checkpoint_dir=tmp_path / "b",
            progress=False, on_log=crash_at_5, log_every=1)
    assert [p.name for p in checkpoints(tmp_path / "b")] == ["step-0000002", "step-0000004"]
    # A fresh process: a new model object from a different init, restored from the checkpoint.
    fresh = tiny_llama(tok, seed=99)
    resumed = fit(fresh, groups, cfg, pad_id=tok.pad_token_id, checkpoint_dir=tmp_path / "b",
                  progress=False)
    assert resumed.resumed_from == 4
    assert [r["loss"] for r in resumed.losses] == [r["loss"] for r in ref.losses]
    a, b = _weights(straight), _weights(fresh)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_trains_adapters_only_and_merges(tok):
    from flows.train.trainer import final_model

    groups = ex_mod.build(train_rows(4), tok, "cot", 512).groups
    cfg = TrainConfig(objective="cot", method="lora", lora_r=4, max_steps=3, batch_size=2,
                      learning_rate=1e-2, lora_targets=["q_proj", "v_proj"])
    model = prepare(tiny_llama(tok), cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    result = fit(model, groups, cfg, pad_id=tok.pad_token_id, progress=False)
    assert result.steps == 3
    merged = final_model(model)
    assert not any("lora_" in n for n, _ in merged.named_parameters())


def test_kd_losses_vanish_for_identical_teacher():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5, 6], [-100, 1, 2, -100, -100, -100]])
    other = torch.randn(2, 6, 11)
    for kind in ("forward_kl", "reverse_kl", "jsd"):
        assert losses.dense_kd_loss(logits, logits, labels, kind=kind).item() == pytest.approx(0, abs=1e-6)
        assert losses.dense_kd_loss(logits, other, labels, kind=kind, temperature=2.0).item() > 0.01
    # Sparse: a teacher whose top-k is the student's own top-k (renormalized) vs a different one.
    # The teacher entry at position t+1 describes the token at t+1, predicted from position t.
    top = torch.log_softmax(logits, -1).topk(11, dim=-1)
    ids = torch.cat([torch.full_like(top.indices[:, :1], -1), top.indices[:, :-1]], 1)
    lps = torch.cat([torch.zeros_like(top.values[:, :1]), top.values[:, :-1]], 1)
    same = losses.topk_kd_loss(logits, ids, lps, labels)
    assert same.item() == pytest.approx(0, abs=1e-5)
    flipped = losses.topk_kd_loss(logits, ids, lps.flip(-1), labels)
    assert flipped.item() > 0.01


def test_logprob_rows_become_sparse_targets(tok):
    """The OpenAI layout as an endpoint returns it -> the stored layout (logprobs_of) -> targets."""
    from flows.teachers.openai_compat import logprobs_of

    row = train_rows(1)[0]
    pieces = [tok.decode([i]) for i in tok("So 12.\nAnswer: 12", add_special_tokens=False)["input_ids"]]
    choice = {"logprobs": {"content": [
        {"token": p, "logprob": -0.1, "bytes": None,
         "top_logprobs": [{"token": p, "logprob": -0.1, "bytes": None},
                          {"token": alt, "logprob": -2.5, "bytes": None}]}
        for p, alt in zip(pieces, pieces[1:] + pieces[:1])]}}
    row["logprobs"] = json.dumps(logprobs_of(choice, 3))
    ex = ex_mod.build([row], tok, "kd", 512, top_k=3).groups[0][0]
    target = [t for t in ex.labels if t >= 0]
    assert tok.decode(target) == "So 12.\nAnswer: 12"
    first = ex.labels.index(target[0])
    assert ex.topk_ids[first][:2] == [target[0], target[1]]
    assert ex.topk_ids[first][2] == -1  # the endpoint gave two alternatives of the three asked
    batch = collate([ex], tok.pad_token_id)
    loss, parts = compute_loss(tiny_llama(tok), batch, TrainConfig(objective="kd"))
    assert parts["kd"] > 0 and torch.isfinite(loss)
    # A row stored in any other layout is named, not read as top-1.
    row["logprobs"] = json.dumps({"content": choice["logprobs"]["content"]})
    with pytest.raises(ex_mod.RowError, match="logprobs"):
        ex_mod.build([row], tok, "kd", 512, top_k=3)


def test_every_backend_stores_one_layout():
    """llama.cpp's server returns k + 1 alternatives (it adds the sampled token) and may repeat a
    text; vLLM adds the sampled token too: stored, each is at most k, best first, no repeats."""
    from flows.teachers.base import token_logprob

    entry = token_logprob("a", -2.0, [("b", -0.5), ("c", -1.0), ("a", -2.0), ("b", -0.5)], 2)
    assert entry == {"token": "a", "logprob": -2.0, "top": [["b", -0.5], ["c", -1.0]]}


def test_keep_layers_cuts_a_smaller_student(tok):
    from flows.train.layers import keep_layers

    model = tiny_llama(tok, layers=4)
    small = keep_layers(model, [0, 3])
    assert small.config.num_hidden_layers == 2 and len(small.model.layers) == 2
    out = small(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, len(tok))
    with pytest.raises(ValueError, match="keep_layers"):
        keep_layers(tiny_llama(tok, layers=2), [0, 5])


def _loss_and_grads(model, batch, cfg, teacher=None):
    model.zero_grad(set_to_none=True)
    loss, parts = compute_loss(model, batch, cfg, teacher)
    loss.backward()
    return parts, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("objective,packing", [("cot", False), ("step_by_step", False),
                                               ("step_by_step", True), ("kd", False),
                                               ("kd-teacher", False)])
def test_target_logits_only_give_the_full_loss_and_gradients(tok, monkeypatch, objective,
                                                             packing):
    """The vocabulary projection runs only where a loss reads it (trainer.keep_target_logits):
    every loss term and every gradient are those of the full logits."""
    import flows.train.trainer as trainer
    from flows.teachers.openai_compat import logprobs_of

    rows = train_rows(3)
    top_k = 0
    if objective == "kd":  # rows with an endpoint's top-k logprobs: the sparse kd loss
        top_k = 2
        for row in rows:
            pieces = [tok.decode([i]) for i in tok(f"{row['rationale']}\nAnswer: {row['answer']}",
                                                   add_special_tokens=False)["input_ids"]]
            row["logprobs"] = json.dumps(logprobs_of({"logprobs": {"content": [
                {"token": p, "logprob": -0.2, "bytes": None,
                 "top_logprobs": [{"token": p, "logprob": -0.2, "bytes": None},
                                  {"token": q, "logprob": -1.8, "bytes": None}]}
                for p, q in zip(pieces, pieces[1:] + pieces[:1])]}}, top_k))
    kind = "kd" if objective.startswith("kd") else objective
    groups = ex_mod.build(rows, tok, kind, 512, top_k=top_k).groups
    examples = [e for g in groups for e in g]
    batch = collate(examples, tok.pad_token_id, packing=packing, max_length=1024)
    cfg = TrainConfig(objective=kind)
    torch.manual_seed(0)
    model = tiny_llama(tok)
    teacher = tiny_llama(tok) if objective == "kd-teacher" else None  # another random init
    assert trainer.keeps_logits(model)
    kept, grads_kept = _loss_and_grads(model, batch, cfg, teacher)
    monkeypatch.setattr(trainer, "keeps_logits", lambda model: False)
    full, grads_full = _loss_and_grads(model, batch, cfg, teacher)
    assert kept.keys() == full.keys() and ({"kd", "label_loss"} & kept.keys() or kind == "cot")
    for key in full:
        assert kept[key] == pytest.approx(full[key], rel=1e-5, abs=1e-6), key
    assert grads_kept.keys() == grads_full.keys()
    for name in grads_full:
        torch.testing.assert_close(grads_kept[name], grads_full[name], rtol=1e-4, atol=1e-6)


def test_only_positions_before_a_target_are_kept():
    labels = torch.tensor([[-100, -100, 5, 6, -100, -100], [-100, -100, -100, 7, 8, -100]])
    task = torch.tensor([[0] * 6, [1] * 6])
    keep, compact = keep_target_logits({"labels": labels, "task": task, "input_ids": labels.clamp(0)})
    assert keep.tolist() == [1, 2, 3, 5]  # predicting positions 2, 3, 4, and the last
    assert compact["labels"].tolist() == [[-100, 5, 6, -100], [-100, -100, 7, 8]]
    assert compact["task"].tolist() == [[0] * 4, [1] * 4]
    assert compact["input_ids"].shape == (2, 6)  # the model still reads every token
