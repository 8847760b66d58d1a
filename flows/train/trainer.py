"""The student training loop: a small loop of our own rather than transformers' Trainer.

Why our own: the step-by-step and distillation objectives need per-task and per-token loss
terms, rows whose tasks must share a batch, and a teacher forward pass per batch; as Trainer
subclass hooks these end up re-implementing most of compute_loss and the sampler anyway. The loop
is short, and bench/train_throughput.py measures it against a plain Trainer on the same data.

Reproducible: the batch order of every epoch is a pure function of the seed, so step k always
sees the same rows, with or without a crash in between. Checkpoints are safetensors only (no
pickles): trainable weights, AdamW moments, and the torch RNG state, written to a temporary
folder and renamed, so a crash never leaves a half checkpoint; `fit` resumes from the newest one.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic  # a name of its own: tests set the checkpoint clock here
from typing import Callable, NamedTuple

import torch
from safetensors.torch import load_file, save_file

import flows.progress
from flows.spec import StudentSpec
from flows.train import losses
from flows.train.examples import Example

CKPT_PREFIX = "step-"


class TrainConfig(StudentSpec):
    """The trainer's settings: the curriculum's `student` section (one set of defaults, in
    flows/spec.py) plus the knobs a curriculum does not expose."""

    max_grad_norm: float = 1.0
    keep_checkpoints: int = 2

    @classmethod
    def of(cls, student: StudentSpec) -> "TrainConfig":
        return cls(**student.model_dump())


@dataclass
class FitResult:
    steps: int
    resumed_from: int | None
    losses: list[dict]
    tokens: int
    seconds: float
    stage_runs: list[dict] = field(default_factory=list)  # the order it trained in
    output: Path | None = None
    precision: str = "fp32"  # what forward and backward ran in: "fp32" or "bf16" (autocast)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def cpu_bf16(setting: bool | str) -> bool:
    """Whether training on CPU runs under bfloat16 autocast: `auto` where the CPU has native
    bfloat16 instructions (on others torch emulates them, which is not expected to pay)."""
    if setting != "auto":
        return bool(setting)
    native = (getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and check() for check in native)


def pick_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


# -- batches --------------------------------------------------------------------------------
class Batch(NamedTuple):
    rows: list[int]  # group (row) indices of one micro-batch
    stage: int       # the curriculum stage it trains (curated difficulty, 0 = easiest)


def _batches(pool: list[int], sizes: list[int], batch_size: int, rng: random.Random
             ) -> list[list[int]]:
    """Shuffle a pool of rows, group by length inside windows of 32 batches so padding stays
    small, then shuffle the batches (so long and short batches interleave)."""
    order = list(pool)
    rng.shuffle(order)
    window = batch_size * 32
    batches = []
    for w in range(0, len(order), window):
        chunk = sorted(order[w:w + window], key=lambda i: sizes[i])
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def epoch_plan(sizes: list[int], stages: list[int], cfg: TrainConfig, epoch: int) -> list[Batch]:
    """One epoch. order "curriculum": the curated stages easiest first, rows shuffled only inside
    their stage, and (replay) a seeded share of earlier stages' rows mixed into each later stage
    so the easy skills are not forgotten. order "shuffled": every row in one pool."""
    rng = random.Random(cfg.seed * 1000 + epoch)
    n = len(sizes)
    if cfg.order == "shuffled":
        return [Batch(b, max(stages[i] for i in b))
                for b in _batches(list(range(n)), sizes, cfg.batch_size, rng)]
    plan, earlier = [], []
    for stage in sorted(set(stages)):
        pool = [i for i in range(n) if stages[i] == stage]
        extra = min(len(earlier), round(cfg.replay * len(pool)))
        plan += [Batch(b, stage) for b in _batches(pool + rng.sample(earlier, extra), sizes,
                                                    cfg.batch_size, rng)]
        earlier += pool
    return plan


def batch_plan(sizes: list[int], cfg: TrainConfig, stages: list[int] | None = None
               ) -> list[Batch]:
    """Micro-batches for the whole run: epochs one after the other, each a pure function of
    (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
    `stages`: each row's curriculum stage (none: one stage)."""
    n = len(sizes)
    if n == 0:
        raise ValueError("no training examples")
    stages = stages or [0] * n
    plan: list[Batch] = []
    epoch = 0
    if cfg.max_steps is not None:
        while len(plan) < cfg.max_steps * cfg.grad_accum:
            plan += epoch_plan(sizes, stages, cfg, epoch)
            epoch += 1
        return plan
    while epoch < math.ceil(cfg.epochs):
        this = epoch_plan(sizes, stages, cfg, epoch)
        if epoch + 1 > cfg.epochs:  # a fractional last epoch: its first share of batches
            this = this[:math.ceil((cfg.epochs - epoch) * len(this))]
        plan += this
        epoch += 1
    return plan


def stage_runs(plan: list[Batch], steps: int, grad_accum: int) -> list[dict]:
    """The order a run trained in, compactly: consecutive optimizer steps by curriculum stage
    (an optimizer step's stage is that of its last micro-batch)."""
    runs: list[dict] = []
    for step in range(steps):
        stage = plan[(step + 1) * grad_accum - 1].stage
        if runs and runs[-1]["stage"] == stage:
            runs[-1]["steps"][1] = step + 1
        else:
            runs.append({"stage": stage, "steps": [step + 1, step + 1]})
    return runs


def total_steps(plan: list[Batch], cfg: TrainConfig) -> int:
    steps = len(plan) // cfg.grad_accum or 1
    return min(steps, cfg.max_steps) if cfg.max_steps is not None else steps


def collate(examples: list[Example], pad_id: int, *, packing: bool = False,
            max_length: int = 512) -> dict[str, torch.Tensor]:
    """Right-padded batch, or (packing) examples concatenated into rows of up to max_length with
    position ids restarting per example: transformers then builds a block-diagonal causal mask
    from the position ids, so packed examples never attend to each other."""
    if packing:
        rows: list[list[Example]] = [[]]
        for ex in sorted(examples, key=len, reverse=True):
            for row in rows:
                if sum(map(len, row)) + len(ex) <= max_length:
                    row.append(ex)
                    break
            else:
                rows.append([ex])
        sequences = [_concat(row) for row in rows if row]
    else:
        sequences = [_concat([ex]) for ex in examples]
    width = max(len(s["input_ids"]) for s in sequences)
    k = next((len(s["topk_ids"][0]) for s in sequences if "topk_ids" in s), None)
    out: dict[str, list] = {n: [] for n in ("input_ids", "labels", "task", "position_ids",
                                            "attention_mask")}
    if k is not None:
        out["topk_ids"], out["topk_logprobs"] = [], []
    for s in sequences:
        pad = width - len(s["input_ids"])
        out["input_ids"].append(s["input_ids"] + [pad_id] * pad)
        out["labels"].append(s["labels"] + [losses.IGNORE] * pad)
        out["task"].append(s["task"] + [-1] * pad)
        # Padding continues as its own "sequence" (positions from 0) so it never joins a packed one.
        out["position_ids"].append(s["position_ids"] + list(range(pad)))
        out["attention_mask"].append([1] * len(s["input_ids"]) + [0] * pad)
        if k is not None:
            n = len(s["input_ids"])
            out["topk_ids"].append(s.get("topk_ids", [[-1] * k] * n) + [[-1] * k] * pad)
            out["topk_logprobs"].append(s.get("topk_logprobs", [[0.0] * k] * n)
                                        + [[0.0] * k] * pad)
    batch = {k: torch.tensor(v) for k, v in out.items()}
    if packing:
        del batch["attention_mask"]  # the packed mask comes from position_ids
    else:
        del batch["position_ids"]
    return batch


def _concat(examples: list[Example]) -> dict[str, list]:
    seq: dict[str, list] = {"input_ids": [], "labels": [], "task": [], "position_ids": []}
    sparse = [ex.topk_ids for ex in examples if ex.topk_ids]
    if sparse:
        k = len(sparse[0][0])
        seq["topk_ids"], seq["topk_logprobs"] = [], []
    for ex in examples:
        seq["input_ids"] += ex.input_ids
        # The first token of each packed example must not be "predicted" from the previous one.
        seq["labels"] += [losses.IGNORE] + ex.labels[1:]
        seq["task"] += [ex.task] * len(ex)
        seq["position_ids"] += list(range(len(ex)))
        if sparse:
            seq["topk_ids"] += ex.topk_ids or [[-1] * k] * len(ex)
            seq["topk_logprobs"] += ex.topk_logprobs or [[0.0] * k] * len(ex)
    return seq


# -- loss -----------------------------------------------------------------------------------
# Tensors aligned with labels along the sequence (compacted with them by `keep_target_logits`).
ALIGNED = ("labels", "task", "topk_ids", "topk_logprobs")


def keeps_logits(model) -> bool:
    """Whether the model's forward takes `logits_to_keep` (transformers' causal LMs do)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(type(base).forward).parameters


def keep_target_logits(batch: dict) -> tuple[torch.Tensor, dict]:
    """The positions whose logits a loss reads, and the batch's label-aligned tensors compacted
    to them. Every loss pairs logits[:, t] with labels[:, t + 1] and reads only target labels,
    so only positions t with a target at t + 1 (in any row) need the vocabulary projection;
    the last position is kept as well, so the compacted logits stay one longer than the
    compacted labels need, as `losses.shift` expects (that column is never read). Why: a
    quickstart row is 140 tokens of which 43 are targets, and the projection onto 49k tokens
    with its cross-entropy at every position cost the 135M student 1.23x in tokens/s
    (bench/train_throughput.py, docs/benchmarks.md); losses and gradients are unchanged."""
    labels = batch["labels"]
    width = labels.size(1)
    wanted = (labels[:, 1:] != losses.IGNORE).any(0).nonzero().flatten()
    keep = torch.cat([wanted, wanted.new_tensor([width - 1])])
    # Compacted column j + 1 holds the label logits column j predicts; column 0 is never read.
    gather = torch.cat([wanted.new_zeros(1), wanted + 1])
    return keep, {**batch, **{k: batch[k][:, gather] for k in ALIGNED if k in batch}}


def compute_loss(model, batch: dict, cfg: TrainConfig, teacher=None) -> tuple[torch.Tensor, dict]:
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    if keeps_logits(model) and (teacher is None or keeps_logits(teacher)):
        inputs["logits_to_keep"], batch = keep_target_logits(batch)
    logits = model(**inputs, use_cache=False).logits
    labels, task = batch["labels"], batch["task"]
    per_token = losses.token_losses(logits, labels)
    ce = losses.masked_mean(per_token, losses.target_mask(labels))
    parts = {"ce": ce.item()}
    has_text = bool((task == losses.TASK_TEXT).any())
    if has_text:
        lm = losses.task_mean(per_token, labels, task, losses.TASK_TEXT)
        parts["lm_loss"] = lm.item()
    if cfg.objective == "step_by_step":
        loss, extra = losses.step_by_step_loss(per_token, labels, task, cfg.label_weight)
        parts.update(extra)
        if has_text:  # the text rows' own token mean, beside the question rows' two terms
            loss = loss + lm
    elif cfg.objective == "kd" and (teacher is not None or "topk_ids" in batch):
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(**inputs, use_cache=False).logits
            kd = losses.dense_kd_loss(logits, t_logits, labels, kind=cfg.kd_loss,
                                      temperature=cfg.kd_temperature)
        else:
            kd = losses.topk_kd_loss(logits, batch["topk_ids"], batch["topk_logprobs"], labels,
                                     temperature=cfg.kd_temperature)
        loss = cfg.kd_weight * kd + (1 - cfg.kd_weight) * ce
        parts["kd"] = kd.item()
    else:
        loss = ce
    parts["loss"] = loss.item()
    return loss, parts


def on_policy_loss(model, micro: Batch, groups: list[list[Example]], sampler, cfg: TrainConfig,
                   pad_id: int, device: str) -> tuple[torch.Tensor, dict]:
    """(1 - w) * reverse KL to the teacher on the student's own samples of these rows' prompts
    (flows/train/onpolicy.py) + w * cross-entropy on their curated rationales (w =
    on_policy_cot_weight)."""
    w = cfg.on_policy_cot_weight
    parts: dict[str, float] = {}
    loss = torch.zeros((), device=device)
    samples = sampler.examples(model, micro.rows)
    if samples and w < 1:
        batch = {k: v.to(device) for k, v in collate(samples, pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits
        rkl = losses.topk_reverse_kl(logits, batch["topk_ids"], batch["topk_logprobs"],
                                     batch["labels"])
        loss = loss + (1 - w) * rkl
        parts["reverse_kl"] = rkl.item()
    if w > 0:
        cot = [ex for i in micro.rows for ex in groups[i]]
        batch = {k: v.to(device) for k, v in collate(cot, pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False).logits
        ce = losses.masked_mean(losses.token_losses(logits, batch["labels"]),
                                losses.target_mask(batch["labels"]))
        loss = loss + w * ce
        parts["ce"] = ce.item()
    parts["loss"] = loss.item()
    return loss, parts


# -- model preparation ------------------------------------------------------------------------
def prepare(model, cfg: TrainConfig):
    """Full fine-tune, or wrap with LoRA adapters (merged back in `final_model`)."""
    if cfg.method == "lora":
        seed_everything(cfg.seed)  # the adapters' random init is part of a reproducible run
        from peft import LoraConfig, get_peft_model

        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        targets = [t for t in cfg.lora_targets if t in present]
        if not targets:
            raise ValueError(f"student.lora_targets {cfg.lora_targets} match no module of the base")
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout,
                                                 target_modules=targets, task_type="CAUSAL_LM"))
    return model


def final_model(model):
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup, then linear decay to 10% (a pure function of the step: nothing to save)."""
    warm = max(1, int(total * cfg.warmup_ratio))
    if step < warm:
        return cfg.learning_rate * (step + 1) / warm
    frac = (step - warm) / max(1, total - warm)
    return cfg.learning_rate * (1.0 - 0.9 * frac)


# -- checkpoints ----------------------------------------------------------------------------
def _trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, step: int, model, optimizer, history: list[dict],
                    keep: int) -> Path:
    params = _trainable(model)
    final = folder / f"{CKPT_PREFIX}{step:07d}"
    tmp = folder / f".tmp-{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Tied weights share storage; safetensors refuses shared tensors, so each gets its own copy.
    save_file({n: p.detach().contiguous().clone() for n, p in params.items()},
              tmp / "weights.safetensors")
    moments = {}
    for name, p in params.items():
        for key, value in optimizer.state.get(p, {}).items():
            moments[f"{name}::{key}"] = value.detach().clone().reshape(value.shape)
    moments["::rng"] = torch.get_rng_state()
    save_file(moments, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, "history": history}))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX)
                  and (p / "state.json").exists())


def load_checkpoint(path: Path, model, optimizer) -> tuple[int, list[dict]]:
    params = _trainable(model)
    weights = load_file(path / "weights.safetensors")
    missing = set(params) - set(weights)
    if missing:
        raise ValueError(f"checkpoint {path} lacks {sorted(missing)[:3]}...: made by another "
                         "model or method; delete it to start over")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    moments = load_file(path / "optimizer.safetensors")
    for name, p in params.items():
        state = {k.split("::", 1)[1]: v.to(p.device) for k, v in moments.items()
                 if k.startswith(name + "::")}
        if state:
            optimizer.state[p] = state
    torch.set_rng_state(moments["::rng"])
    meta = json.loads((path / "state.json").read_text())
    return meta["step"], meta["history"]


# -- the loop -------------------------------------------------------------------------------
def fit(model, groups: list[list[Example]], cfg: TrainConfig, *, pad_id: int,
        stages: list[int] | None = None, checkpoint_dir: Path | None = None, teacher=None,
        sampler=None, device: str = "auto",
        on_log: Callable[[int, dict], None] | None = None, log_every: int = 5,
        progress: bool = True, description: str = "training",
        on_checkpoint: Callable[[Path], None] | None = None) -> FitResult:
    """Train `model` in place (it must already be `prepare`d) on `groups` (one list of examples
    per row; `stages` = each row's curriculum stage). `teacher`: a local model for logit KD;
    `sampler`: an onpolicy.OnPolicy for on-policy distillation. Resumes from the newest
    checkpoint in checkpoint_dir, if any; `on_checkpoint(checkpoint_dir)` runs after each save."""
    device = pick_device(device)
    seed_everything(cfg.seed)
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    plan = batch_plan([sum(map(len, g)) for g in groups], cfg, stages)
    steps = total_steps(plan, cfg)
    params = [p for p in model.parameters() if p.requires_grad]
    # Fused AdamW: one kernel per step instead of several passes over every parameter (CPU and
    # CUDA); it is also what transformers' Trainer uses by default.
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  fused=all(p.is_floating_point() for p in params))
    start, history, resumed = 0, [], None
    ckpts = checkpoints(checkpoint_dir) if checkpoint_dir else []
    if ckpts:
        start, history = load_checkpoint(ckpts[-1], model, optimizer)
        resumed = start
    precision = "bf16" if device == "cuda" or cpu_bf16(cfg.cpu_bf16) else "fp32"
    autocast = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else None
    tokens, t0 = 0, time.perf_counter()
    saved = monotonic()  # when the last checkpoint was written (the start counts as one)
    # The bar's own rule decides whether it shows (a terminal, or STAIRS_PROGRESS=1).
    bar = flows.progress.bar(description, steps, start=start,
                             columns=("loss {task.fields[loss]:.4f}",), loss=0.0) \
        if progress else contextlib.nullcontext(lambda n=1, **fields: None)
    with bar as advance:
        for step in range(start, steps):
            lr = lr_at(step, steps, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            acc: dict[str, float] = {}
            micros = plan[step * cfg.grad_accum:(step + 1) * cfg.grad_accum]
            for micro in micros:
                examples = [ex for i in micro.rows for ex in groups[i]]
                batch = {k: v.to(device) for k, v in collate(
                    examples, pad_id, packing=cfg.packing, max_length=cfg.max_length).items()}
                tokens += sum(len(ex) for ex in examples)
                with autocast or contextlib.nullcontext():
                    if sampler is not None:
                        loss, parts = on_policy_loss(model, micro, groups, sampler, cfg, pad_id,
                                                     device)
                    else:
                        loss, parts = compute_loss(model, batch, cfg, teacher)
                if loss.requires_grad:  # an on-policy batch whose samples were all empty
                    (loss / cfg.grad_accum).backward()
                for k, v in parts.items():
                    acc[k] = acc.get(k, 0.0) + v / cfg.grad_accum
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"step": step + 1, "lr": lr, "stage": micros[-1].stage,
                      **{k: round(v, 6) for k, v in acc.items()}}
            history.append(record)
            advance(loss=acc.get("loss", 0.0))
            if on_log is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
                on_log(step + 1, record)
            # No checkpoint after the last step: the caller saves the model itself right away
            # (the train stage then deletes the checkpoints), and one is 1.6 GB and 9 s here.
            if checkpoint_dir is not None and cfg.checkpoint_every and step + 1 < steps and (
                    (step + 1) % cfg.checkpoint_every == 0) and (
                    monotonic() - saved >= 60 * cfg.checkpoint_minutes):
                save_checkpoint(checkpoint_dir, step + 1, model, optimizer, history,
                                cfg.keep_checkpoints)
                saved = monotonic()
                if on_checkpoint is not None:
                    on_checkpoint(checkpoint_dir)
    return FitResult(steps=steps, resumed_from=resumed, losses=history, tokens=tokens,
                     seconds=time.perf_counter() - t0, stage_runs=stage_runs(plan, steps,
                                                                             cfg.grad_accum),
                     precision=precision)


def config_dict(cfg: TrainConfig) -> dict:
    return cfg.model_dump(mode="json")
