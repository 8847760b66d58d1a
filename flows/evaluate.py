"""Evaluation of any model (HF folder, GGUF file, embedded, catalog:<id>) on held-out rows.

Each eval row (never seen by teacher or student) is rendered through the generate template,
answered greedily, and scored with flows/answers.py, the same normalizer curation uses to keep
teacher rows. HF models run in transformers (batched, left-padded); GGUF files run in llama.cpp
in-process (llama-cpp-python), so a quantized student is scored exactly as it would be served.
For HF models the mean loss / perplexity of rows that carry a rationale is reported too.

    stairs eval smollm2-135m --curriculum curricula/quickstart.yaml
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from flows.prompting.template import zero_shot
from flows.answers import answers_match, extract_answer


def score(outputs: list[str | None], golds: list[str | None]) -> dict:
    """Exact match of the extracted final answer against the gold answer, per row and overall."""
    predicted = [extract_answer(o) for o in outputs]
    correct = [answers_match(p, g) for p, g in zip(predicted, golds)]
    n = len(correct)
    return {"n": n, "correct": sum(correct), "accuracy": sum(correct) / n if n else 0.0,
            "predicted": predicted, "is_correct": correct}


def as_template(template, prompts_dir=None):
    """A loaded template, or the named one from prompts/ (or prompts_dir)."""
    if hasattr(template, "render"):
        return template
    from flows.prompting import load_template

    return load_template(template, prompts_dir=prompts_dir)


# -- HF -----------------------------------------------------------------------------------------
def generate_hf(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int,
                batch_size: int = 8) -> tuple[list[str], int]:
    """Greedy completions; returns (texts, generated token count)."""
    import torch

    side, tokenizer.padding_side = tokenizer.padding_side, "left"  # generation continues at the end
    texts, generated = [], 0
    device = next(model.parameters()).device
    model.eval()
    try:
        # Longest prompts first keeps batches of similar length (less padding to attend over).
        order = sorted(range(len(conversations)), key=lambda i: -len(str(conversations[i])))
        results: dict[int, str] = {}
        for b in range(0, len(order), batch_size):
            idx = order[b:b + batch_size]
            prompts = [tokenizer.apply_chat_template(conversations[i], tokenize=False,
                                                     add_generation_prompt=True) for i in idx]
            enc = tokenizer(prompts, return_tensors="pt", padding=True,
                            add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            for i, seq in zip(idx, new):
                ids = seq.tolist()
                if tokenizer.eos_token_id in ids:
                    ids = ids[:ids.index(tokenizer.eos_token_id) + 1]
                generated += len(ids)
                results[i] = tokenizer.decode(ids, skip_special_tokens=True)
        texts = [results[i] for i in range(len(conversations))]
    finally:
        tokenizer.padding_side = side
    return texts, generated


def target_loss(model, tokenizer, rows: list[dict], template, *, max_length: int = 512,
                batch_size: int = 8) -> dict | None:
    """Mean token loss of "rationale\\nAnswer: answer" after the rendered prompt, over the rows
    that carry a rationale (None when none do)."""
    import torch

    from flows.student import examples as ex_mod
    from flows.student import losses
    from flows.student.trainer import collate

    built = []
    for row in rows:
        if not row.get("rationale"):
            continue
        messages = (zero_shot(json.loads(row["messages"])) if row.get("messages")
                    else template.render(row, few_shot=False))
        answer = row.get("answer") or row.get("gold_answer")
        e = ex_mod.encode(tokenizer, messages, ex_mod.cot_target(row["rationale"], str(answer)),
                          max_length)
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


# -- GGUF ---------------------------------------------------------------------------------------
def generate_gguf(path: Path, conversations: list[list[dict]], *, max_new_tokens: int,
                  n_ctx: int = 2048) -> tuple[list[str], int]:
    from llama_cpp import Llama

    from flows.settings import cpu_threads

    threads = cpu_threads()
    llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, seed=0, verbose=False)
    texts, generated = [], 0
    try:
        for messages in conversations:
            reply = llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1,
                                               max_tokens=max_new_tokens, seed=0)
            texts.append(reply["choices"][0]["message"]["content"] or "")
            generated += reply["usage"]["completion_tokens"]
    finally:
        llm.close()
    return texts, generated


# -- entry point --------------------------------------------------------------------------------
def evaluate_model(model_ref, rows: list[dict], template, *, max_new_tokens: int = 160,
                   batch_size: int = 8, catalog=None, device: str = "auto",
                   prompts_dir=None, with_loss: bool = True, few_shot: bool = False) -> dict:
    """Score a model on eval rows. model_ref: a reference string ('smollm2-135m', a folder, a
    .gguf file, 'catalog:<id>') or an already loaded (model, tokenizer) pair. Students are asked
    without the template's worked examples (as they were trained); few_shot=True asks the way a
    base teacher is asked."""
    from flows.student import base
    from flows.student.trainer import pick_device

    rows = list(rows)
    tmpl = as_template(template, prompts_dir)
    conversations = [tmpl.render(r, few_shot=few_shot) for r in rows]
    golds = [r.get("answer") if "gold_answer" not in r else r["gold_answer"] for r in rows]
    loss = None
    t0 = time.perf_counter()
    if isinstance(model_ref, tuple):
        model, tokenizer = model_ref
        fmt, where = "hf", "in-memory"
        outputs, generated = generate_hf(model, tokenizer, conversations,
                                         max_new_tokens=max_new_tokens, batch_size=batch_size)
        gen_seconds = time.perf_counter() - t0
        if with_loss:
            loss = target_loss(model, tokenizer, rows, tmpl, batch_size=batch_size)
    else:
        resolved = base.resolve(str(model_ref), catalog)
        fmt, where = resolved.kind, str(resolved.path)
        if resolved.kind == "gguf":
            outputs, generated = generate_gguf(resolved.path, conversations,
                                               max_new_tokens=max_new_tokens)
            gen_seconds = time.perf_counter() - t0
        else:
            model, tokenizer, _ = base.load(str(model_ref), catalog=catalog,
                                            device=pick_device(device))
            t0 = time.perf_counter()  # loading is not part of generation speed
            outputs, generated = generate_hf(model, tokenizer, conversations,
                                             max_new_tokens=max_new_tokens, batch_size=batch_size)
            gen_seconds = time.perf_counter() - t0
            if with_loss:
                loss = target_loss(model, tokenizer, rows, tmpl, batch_size=batch_size)
    scored = score(outputs, golds)
    return {
        "format": fmt, "model": where, "template": tmpl.name,
        "template_hash": getattr(tmpl, "content_hash", None),
        "n": scored["n"], "correct": scored["correct"], "accuracy": scored["accuracy"],
        "generated_tokens": generated, "seconds": gen_seconds,
        "tokens_per_s": generated / gen_seconds if gen_seconds else 0.0,
        "eval_loss": loss["loss"] if loss else None,
        "perplexity": loss["perplexity"] if loss else None,
        "loss_rows": loss["rows"] if loss else 0,
        "predictions": [{"id": r.get("id"), "gold": g, "predicted": p, "correct": c, "output": o}
                        for r, g, p, c, o in zip(rows, golds, scored["predicted"],
                                                 scored["is_correct"], outputs)],
    }


METRICS = {"accuracy": "eval_accuracy", "eval_loss": "eval_loss", "perplexity": "eval_perplexity",
           "tokens_per_s": "eval_tokens_per_s"}


def record(catalog, result: dict, *, model_id: int, run_id: str | None = None,
           stage_id: int | None = None, round_index: int | None = None,
           eval_shard_ids: list[int] = ()) -> list:
    """Evaluation metrics as catalog rows, linked to the model (and through it, via ModelShard,
    to the shards it was trained on; their ids are repeated in meta for direct reading)."""
    trained_on = [s.id for s in catalog.model_training_shards(model_id)]
    meta = {"n": result["n"], "correct": result["correct"], "template": result["template"],
            "template_hash": result["template_hash"], "format": result["format"],
            "eval_shards": list(eval_shard_ids), "training_shards": trained_on}
    rows = []
    for key, name in METRICS.items():
        if result.get(key) is not None:
            rows.append(catalog.log_metric(name, result[key], run_id=run_id, stage_id=stage_id,
                                           model_id=model_id, round_index=round_index,
                                           split="eval", meta=meta))
    return rows
