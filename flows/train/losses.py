"""Training losses. Every loss is computed only where labels != -100 (target tokens); prompt and
padding positions never contribute.

- `token_losses`: per-token cross-entropy, shifted so position t predicts token t+1.
- `task_mean`: mean over the target tokens of one task (label or rationale) in the batch.
- `step_by_step_loss`: a·label + (1−a)·rationale, each a token mean over its own task
  (Distilling Step-by-Step, Hsieh et al. 2023, with a = 0.5 in the paper's code).
- text rows (TASK_TEXT, textbook lessons) add their own token mean, `lm_loss`, to whatever the
  question rows' objective is (see trainer.compute_loss).
- `dense_kd_loss`: forward KL, reverse KL or JSD between teacher and student logits at temperature
  T (scaled by T² so gradients keep their size as T changes, Hinton et al.).
- `topk_kd_loss`: forward KL from a teacher's top-k logprobs (renormalized over the k tokens it
  returned) to the student's full-vocabulary distribution at those tokens (DistillKit-style
  sparse distillation, for teachers behind an API that only return top-k).
- `topk_reverse_kl`: reverse KL(student || teacher) when the teacher gave only its top-k: both
  distributions coarsened to the k tokens plus one "everything else" bucket, which is the exact
  KL of those coarsened distributions and a lower bound of the full one (on-policy distillation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100
# TASK_TEXT: plain language modelling over a whole text (a textbook lesson): every token is a
# target, no prompt.
TASK_RATIONALE, TASK_LABEL, TASK_TEXT = 0, 1, 2


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits[:, :-1, :], labels[:, 1:]


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[batch, seq-1] cross-entropy per predicted token; 0 where the label is ignored.

    The labels are shifted (padded with IGNORE), not the logits: slicing the [batch, seq, vocab]
    logits would copy the largest tensor of the step (141 MB for 4 x 180 tokens x 49k vocab)."""
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), shifted.reshape(-1),
                           ignore_index=IGNORE, reduction="none")
    return loss.view(shifted.shape)[:, :-1]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    return (values * mask).sum() / n.clamp(min=1)


def target_mask(labels: torch.Tensor) -> torch.Tensor:
    return (labels[:, 1:] != IGNORE).float()


def task_mean(per_token: torch.Tensor, labels: torch.Tensor, task: torch.Tensor,
              which: int) -> torch.Tensor:
    """`task` is per token ([batch, seq], aligned with labels) so packed rows can mix tasks."""
    mask = target_mask(labels) * (task[:, 1:] == which).float()
    return masked_mean(per_token, mask)


def step_by_step_loss(per_token: torch.Tensor, labels: torch.Tensor, task: torch.Tensor,
                      alpha: float) -> tuple[torch.Tensor, dict]:
    label = task_mean(per_token, labels, task, TASK_LABEL)
    rationale = task_mean(per_token, labels, task, TASK_RATIONALE)
    return alpha * label + (1 - alpha) * rationale, {"label_loss": label.item(),
                                                     "rationale_loss": rationale.item()}


def dense_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                  labels: torch.Tensor, *, kind: str = "forward_kl",
                  temperature: float = 1.0) -> torch.Tensor:
    """Divergence between the two next-token distributions, averaged over target positions."""
    s, labels_s = shift(student_logits, labels)
    t, _ = shift(teacher_logits, labels)
    if s.size(-1) != t.size(-1):
        raise ValueError(f"teacher vocabulary {t.size(-1)} != student vocabulary {s.size(-1)}: "
                         "white-box distillation needs a shared tokenizer")
    log_q = F.log_softmax(s.float() / temperature, dim=-1)
    log_p = F.log_softmax(t.float() / temperature, dim=-1)
    if kind == "forward_kl":      # mode-covering: KL(teacher || student)
        div = (log_p.exp() * (log_p - log_q)).sum(-1)
    elif kind == "reverse_kl":    # mode-seeking: KL(student || teacher)
        div = (log_q.exp() * (log_q - log_p)).sum(-1)
    elif kind == "jsd":           # symmetric, bounded: mean of both KLs to the mixture
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - torch.log(torch.tensor(2.0))
        div = 0.5 * (log_p.exp() * (log_p - log_m)).sum(-1) + \
            0.5 * (log_q.exp() * (log_q - log_m)).sum(-1)
    else:
        raise ValueError(f"unknown distillation loss {kind!r}")
    return masked_mean(div, (labels_s != IGNORE).float()) * temperature ** 2


def topk_kd_loss(student_logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                 labels: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
    """topk_ids/topk_logprobs: [batch, seq, k] aligned with labels (the teacher's distribution
    for the token AT each position); ids < 0 mark missing alternatives or non-target positions."""
    s, labels_s = shift(student_logits, labels)
    ids, lps = topk_ids[:, 1:, :], topk_logprobs[:, 1:, :]
    valid = ids >= 0
    log_q = F.log_softmax(s.float() / temperature, dim=-1).gather(-1, ids.clamp(min=0))
    # Renormalize the teacher over the k tokens it returned; missing slots get no mass.
    t_logits = torch.where(valid, lps.float() / temperature, torch.full_like(lps, -1e9))
    log_p = F.log_softmax(t_logits, dim=-1)
    div = torch.where(valid, log_p.exp() * (log_p - log_q), torch.zeros_like(log_q)).sum(-1)
    mask = ((labels_s != IGNORE) & valid.any(-1)).float()
    return masked_mean(div, mask) * temperature ** 2


def topk_reverse_kl(student_logits: torch.Tensor, topk_ids: torch.Tensor,
                    topk_logprobs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Reverse KL(q || p), q the student and p the teacher, over each position's teacher support
    S (ids >= 0, aligned with labels like topk_kd_loss) plus the bucket "not in S": mode-seeking,
    so the student is pushed off tokens the teacher finds unlikely, and mass the student puts
    outside the teacher's top-k is charged against the teacher's leftover mass, never free."""
    s, labels_s = shift(student_logits, labels)
    ids, lps = topk_ids[:, 1:, :], topk_logprobs[:, 1:, :].float()
    valid = ids >= 0
    log_q_all = F.log_softmax(s.float(), dim=-1)
    log_q = log_q_all.gather(-1, ids.clamp(min=0))
    q = torch.where(valid, log_q.exp(), torch.zeros_like(log_q))
    p = torch.where(valid, lps.exp(), torch.zeros_like(lps))
    tiny = 1e-6
    in_support = (q * (log_q - lps)).where(valid, torch.zeros_like(q)).sum(-1)
    q_rest = (1 - q.sum(-1)).clamp(min=tiny)
    p_rest = (1 - p.sum(-1)).clamp(min=tiny)
    div = in_support + q_rest * (q_rest.log() - p_rest.log())
    mask = ((labels_s != IGNORE) & valid.any(-1)).float()
    return masked_mean(div, mask)
