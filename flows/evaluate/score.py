"""Scoring on held-out rows: the one function every accuracy in stairs comes from (the teacher's
score, the student's eval in the train stage, every quantized artifact), so the two numbers the
staircase's gate compares come from the same code, prompts, decoding and template.

Each eval row (never seen by teacher or student) is rendered through the curriculum's generate
template, answered greedily by an engine (flows/evaluate/engines.py), and its final answer is
scored with flows/answers.py, the same normalizer curation uses to keep teacher rows.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field

import numpy as np

from flows.answers import answers_match, extract_answer
from flows.prompting.template import zero_shot


@dataclass
class Scored:
    """Accuracy of one model on a list of rows, with every prediction."""

    n: int
    correct: int
    accuracy: float
    generated_tokens: int
    seconds: float
    predictions: list[dict] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds else 0.0


def gold(row: dict):
    return row["gold_answer"] if "gold_answer" in row else row.get("answer")


# Conversations per engine call: a progress step, and large enough that the torch engine's
# length-sorted batches (8 rows) still pad little.
CHUNK = 32


def answer_accuracy(engine, rows: list[dict], template, *, few_shot: bool,
                    max_new_tokens: int, description: str = "evaluate") -> Scored:
    """Render each row through `template`, answer greedily with `engine`, and score the final
    answer against the row's gold answer. Students are asked without the template's worked
    examples (as they were trained, few_shot=False); a base teacher with them, as it teaches."""
    from flows.progress import bar

    conversations = [template.render(r, few_shot=few_shot) for r in rows]
    started = time.perf_counter()
    outputs, generated = [], 0
    with bar(f"{description} ({len(rows)} rows)", len(conversations)) as advance:
        for c in range(0, len(conversations), CHUNK):
            chunk = conversations[c:c + CHUNK]
            out, tokens = engine.generate(chunk, max_new_tokens)
            outputs += out
            generated += tokens
            advance(len(chunk))
    seconds = time.perf_counter() - started
    golds = [gold(r) for r in rows]
    predicted, correct = score_outputs(outputs, golds)
    n = len(correct)
    return Scored(
        n=n, correct=sum(correct), accuracy=sum(correct) / n if n else 0.0,
        generated_tokens=generated, seconds=seconds,
        predictions=[{"id": r.get("id"), "gold": g, "predicted": p, "correct": c, "output": o}
                     for r, g, p, c, o in zip(rows, golds, predicted, correct, outputs)])


def score_outputs(outputs: list[str | None], golds: list) -> tuple[list, list[bool]]:
    """The final answer extracted from each output, and whether it matches its gold answer
    (flows/answers.py: the normalizer curation keeps teacher rows with)."""
    predicted = [extract_answer(o) for o in outputs]
    return predicted, [answers_match(p, g) for p, g in zip(predicted, golds)]


def perplexity_text(row: dict) -> str:
    return f"{row['passage']}\n{row['question']}\nAnswer: {row['answer']}"


def logit_scores(engine, rows: list[dict], tokenizer, *, reference=None) -> dict:
    """Perplexity of `engine` on the eval rows' text with their gold answers (same token ids in
    every engine: the student's tokenizer) and, with `reference` (the float file), how closely
    `engine` (a quantized file) reproduces it: the mean KL(reference || engine) of the next-token
    distributions and the share of positions where both rank the same token first (llama.cpp's
    `perplexity --kl-divergence` idea). Accuracy on 60 rows moves in steps of 1.7 points; this
    sees every position of every row. One pass of each model's logits per row: perplexity and
    fidelity computed apart took the quantized file's logits twice (about 9 s of each quickstart
    file's measurement).

    Log-softmax in float32 (the logits' own precision) with torch, sums in float64: a quickstart
    round's 300 of them took 0.45 s against 4.96 s in float64 numpy, and this function 23.2
    against 27.0 s (cProfile); perplexity moved in its fourth decimal (docs/benchmarks.md)."""
    import torch

    nll, kl_sum, same, n = 0.0, 0.0, 0, 0
    for r in rows:
        ids = tokenizer(perplexity_text(r))["input_ids"]
        targets = torch.tensor(ids[1:])
        log_q = _log_softmax(engine.logits(ids))
        nll -= float(log_q[torch.arange(len(targets)), targets].sum(dtype=torch.float64))
        n += len(targets)
        if reference is None:
            continue
        log_p = _log_softmax(reference.logits(ids))
        if log_p.shape != log_q.shape:
            raise ValueError(f"fidelity: vocabularies differ ({log_p.shape[-1]} vs "
                             f"{log_q.shape[-1]} logits): not the same model")
        kl_sum += float((log_p.exp() * (log_p - log_q)).sum(dtype=torch.float64))
        same += int((log_p.argmax(-1) == log_q.argmax(-1)).sum())
    scores = {"perplexity": float(np.exp(nll / n)) if n else float("nan")}
    if reference is not None:
        scores.update({"kl_divergence": kl_sum / n if n else float("nan"),
                       "same_top_token": same / n if n else float("nan"), "kl_tokens": n})
    return scores


def _log_softmax(logits: np.ndarray):
    import torch

    return torch.log_softmax(torch.from_numpy(np.asarray(logits, dtype=np.float32)), dim=-1)


def target_loss(model, tokenizer, rows: list[dict], template, *, max_length: int = 512,
                batch_size: int = 8) -> dict | None:
    """Mean token loss of "rationale\\nAnswer: answer" after the rendered prompt, over the rows
    that carry a rationale (None when none do). Torch models only."""
    import torch

    from flows.train import examples as ex_mod
    from flows.train import losses
    from flows.train.trainer import collate

    built = []
    for row in rows:
        if not row.get("rationale"):
            continue
        messages = (zero_shot(json.loads(row["messages"])) if row.get("messages")
                    else template.render(row, few_shot=False))
        e = ex_mod.encode(tokenizer, messages,
                          ex_mod.cot_target(row["rationale"], str(gold(row))), max_length)
        if e is not None:
            built.append(e)
    if not built:
        return None
    device = next(model.parameters()).device
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for b in range(0, len(built), batch_size):
            batch = {k: v.to(device) for k, v in collate(
                built[b:b + batch_size], tokenizer.pad_token_id).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False).logits
            per_token = losses.token_losses(logits, batch["labels"])
            mask = losses.target_mask(batch["labels"])
            total += float((per_token * mask).sum())
            count += int(mask.sum())
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "rows": len(built),
            "tokens": count}


def measure(engine, rows: list[dict], template, *, tokenizer, max_new_tokens: int,
            speed_tokens: int, speed_repeats: int = 3, description: str = "measure",
            reference=None, record=None) -> dict:
    """What every quantized artifact gets: accuracy (answer_accuracy, as the student was trained:
    no worked examples), perplexity and median decode tokens/s, on the same eval rows; with
    `reference` (the float file's logits: a saved_logits.SavedLogits), its fidelity to that
    file (logit_scores). `record` (a SavedLogits): save this engine's logits there, for the
    files measured against it next."""
    import statistics

    scored = answer_accuracy(engine, rows, template, few_shot=False,
                             max_new_tokens=max_new_tokens, description=description)
    messages = template.render(rows[0], few_shot=False)
    speeds = [engine.decode_speed(messages, speed_tokens) for _ in range(speed_repeats)]
    scoring = record.recording(engine) if record is not None else engine
    scores = logit_scores(scoring, rows, tokenizer, reference=reference)
    return {
        "accuracy": scored.accuracy, "eval_rows": scored.n, **scores,
        "tokens_per_s": statistics.median(speeds),
        "samples": [{"id": p["id"], "gold": p["gold"], "reply": p["output"][:300],
                     "correct": p["correct"]} for p in scored.predictions[:3]],
    }
