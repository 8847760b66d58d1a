"""Training examples from curated rows (docs/contracts.md, "Student").

Input = the chat `messages` the teacher saw, through the student tokenizer's chat template with
the assistant turn opened; target = what the student should answer, closed by the end-of-turn
token so it learns to stop. Labels are -100 on every prompt token: loss is only on the target.

Objectives and their examples per row:
- label:        prompt -> "Answer: A"
- cot:          prompt -> "R\nAnswer: A"
- step_by_step: prompt -> "R\nAnswer: A"   (rationale task) and
                "[label] " + prompt -> "Answer: A"   (label task)
  Deviation from the paper, on purpose: its rationale target is R alone and inference uses the
  label task. Here the unprefixed task keeps the contract target (R + answer), so a trained
  student still answers the teacher's template with a rationale and can be the next round's
  teacher; the prefixed label task is the auxiliary signal the a·label + (1−a)·rationale loss
  weighs.
- kd:           prompt -> "R\nAnswer: A" plus teacher logits (local teacher) or, for rows with a
  `logprobs` column, prompt -> the teacher's own response tokens with its top-k logprobs.
- on_policy:    the cot example; its prompt is what the student samples from during training
  (flows/train/onpolicy.py), its target the cross-entropy of the optional cot mix.

The prompt is the row's `prompt` column when it has one (a disentangle row: the student template
over its passage and its own question, never the request that asked for questions), else the
request's `messages` without worked examples. Rows with `target` = text (textbook lessons) are
one plain language-modelling example under every objective: the lesson, every token a target.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from flows.prompting.template import zero_shot
from flows.train.losses import IGNORE, TASK_LABEL, TASK_RATIONALE, TASK_TEXT

LABEL_PREFIX = "[label] "
OBJECTIVES = ("step_by_step", "cot", "label", "kd", "on_policy")


class RowError(ValueError):
    """A training row that cannot become an example; names the row and field."""


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    task: int = TASK_RATIONALE
    row_id: str = ""
    # Sparse teacher distribution per position (kd from logprobs): ids/logprobs, k each.
    topk_ids: list[list[int]] | None = None
    topk_logprobs: list[list[float]] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class Built:
    groups: list[list[Example]] = field(default_factory=list)  # one group per row
    stages: list[int] = field(default_factory=list)  # each group's curriculum stage
    skipped: dict[str, int] = field(default_factory=dict)


def answer_target(answer: str) -> str:
    return f"Answer: {answer}"


def cot_target(rationale: str, answer: str) -> str:
    return f"{rationale.strip()}\nAnswer: {answer}"


def _messages(row: dict) -> list[dict]:
    """The student's prompt: the row's `prompt` when set, else the request's `messages`."""
    field = "prompt" if row.get("prompt") else "messages"
    raw = row.get(field)
    if raw is None:
        raise RowError(f"row {row.get('id')}: field 'messages' is missing")
    try:
        messages = json.loads(raw) if isinstance(raw, str) else raw
    except json.JSONDecodeError as e:
        raise RowError(f"row {row.get('id')}: field '{field}' is not JSON ({e})") from None
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and "role" in m and "content" in m for m in messages):
        raise RowError(f"row {row.get('id')}: field '{field}' must be a list of "
                       "{role, content}")
    return zero_shot(messages)


def text_example(tokenizer, text: str, max_length: int, row_id: str = "") -> Example | None:
    """Plain language modelling: the text (closed by end-of-text) with every token a target."""
    ids = tokenizer(text.strip() + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    ids = ids[:max_length]
    if len(ids) < 2:
        return None
    return Example(ids, list(ids), TASK_TEXT, row_id)


def with_prefix(messages: list[dict], prefix: str) -> list[dict]:
    """The task prefix goes in front of the last user turn (the request itself)."""
    out = [dict(m) for m in messages]
    for m in reversed(out):
        if m["role"] == "user":
            m["content"] = prefix + m["content"]
            return out
    raise RowError("messages have no user turn to carry the task prefix")


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode(tokenizer, messages: list[dict], target: str, max_length: int, *,
           task: int = TASK_RATIONALE, row_id: str = "") -> Example | None:
    """One example, or None when the prompt alone leaves no room for a target token."""
    prompt = prompt_ids(tokenizer, messages)
    target_ids = tokenizer(target + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    room = max_length - len(prompt)
    if room < 2:
        return None
    target_ids = target_ids[:room]  # an over-long target is cut at the end, never the prompt
    return Example(prompt + target_ids, [IGNORE] * len(prompt) + target_ids, task, row_id)


def _answer(row: dict) -> str:
    answer = row.get("answer") or row.get("gold_answer")
    if answer is None or not str(answer).strip():
        raise RowError(f"row {row.get('id')}: no 'answer' or 'gold_answer' to train on")
    return str(answer).strip()


def _rationale(row: dict) -> str:
    rationale = row.get("rationale")
    if rationale is None or not str(rationale).strip():
        raise RowError(f"row {row.get('id')}: objective needs a 'rationale' and the row has none")
    return str(rationale)


def row_examples(row: dict, tokenizer, objective: str, max_length: int,
                 top_k: int = 0) -> list[Example | None]:
    if row.get("target") == "text":
        return [text_example(tokenizer, _rationale(row), max_length, str(row.get("id", "")))]
    messages, rid = _messages(row), str(row.get("id", ""))
    answer = _answer(row)
    if objective == "label":
        return [encode(tokenizer, messages, answer_target(answer), max_length,
                       task=TASK_LABEL, row_id=rid)]
    if objective in ("cot", "on_policy"):  # on_policy: the prompt, and the rationale for its cot mix
        return [encode(tokenizer, messages, cot_target(_rationale(row), answer), max_length,
                       row_id=rid)]
    if objective == "step_by_step":
        return [encode(tokenizer, messages, cot_target(_rationale(row), answer), max_length,
                       row_id=rid),
                encode(tokenizer, with_prefix(messages, LABEL_PREFIX), answer_target(answer),
                       max_length, task=TASK_LABEL, row_id=rid)]
    if objective == "kd":
        if row.get("logprobs") and top_k > 0:
            return [logprob_example(row, messages, tokenizer, max_length, top_k)]
        return [encode(tokenizer, messages, cot_target(_rationale(row), answer), max_length,
                       row_id=rid)]
    raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")


def parse_logprobs(raw) -> list[dict]:
    """The `logprobs` column: JSON of [{"token", "logprob", "top": [[token, logprob], ...]}], the
    one layout every teacher backend stores (flows/teachers/base.py: token_logprob)."""
    data = json.loads(raw) if isinstance(raw, str) else raw
    if not isinstance(data, list) or not all(
            isinstance(e, dict) and "token" in e and isinstance(e.get("top"), list) for e in data):
        raise ValueError('expected a list of {"token", "logprob", "top": [[token, logprob]]}')
    return data


def logprob_example(row: dict, messages: list[dict], tokenizer, max_length: int,
                    top_k: int) -> Example | None:
    """Target = the teacher's own generated tokens, each carrying its top-k alternatives.

    Token texts are mapped to student ids by encoding each; a generated token that is not exactly
    one student token means the tokenizers differ, and the row cannot be aligned. An alternative
    that is not one student token is left out (its slot stays empty, id -1)."""
    rid = str(row.get("id", ""))
    try:
        entries = parse_logprobs(row["logprobs"])
    except (ValueError, KeyError, TypeError) as e:
        raise RowError(f"row {rid}: field 'logprobs' unreadable ({e})") from None

    def one_id(text: str) -> int | None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    target, top_ids, top_lps = [], [], []
    for i, entry in enumerate(entries):
        tid = one_id(entry["token"] or "")
        if tid is None:
            raise RowError(f"row {rid}: logprobs token {i} {entry['token']!r} is not one "
                           "student token (teacher and student tokenizers differ)")
        alts = [(one_id(text or ""), float(lp)) for text, lp in entry["top"][:top_k]]
        alts = [(a, lp) for a, lp in alts if a is not None]
        if not alts:
            alts = [(tid, float(entry.get("logprob") or 0.0))]
        alts += [(-1, 0.0)] * (top_k - len(alts))
        target.append(tid)
        top_ids.append([a for a, _ in alts])
        top_lps.append([lp for _, lp in alts])
    if row.get("finish_reason") == "stop" and tokenizer.eos_token_id is not None:
        # Servers leave the end-of-turn token out of the logprobs; without it the student would
        # never learn to stop. It is a cross-entropy target only (no teacher alternatives).
        target.append(tokenizer.eos_token_id)
        top_ids.append([-1] * top_k)
        top_lps.append([0.0] * top_k)
    prompt = prompt_ids(tokenizer, messages)
    room = max_length - len(prompt)
    if room < 2 or not target:
        return None
    n = min(room, len(target))
    pad = [[-1] * top_k for _ in prompt]
    return Example(prompt + target[:n], [IGNORE] * len(prompt) + target[:n], TASK_RATIONALE,
                   rid, pad + top_ids[:n], [[0.0] * top_k for _ in prompt] + top_lps[:n])


def build(rows: list[dict], tokenizer, objective: str, max_length: int, top_k: int = 0) -> Built:
    """Examples grouped by row (a row's tasks always share a batch); over-long rows skipped and
    counted, malformed rows raise RowError naming the row."""
    built = Built()
    for row in rows:
        examples = row_examples(row, tokenizer, objective, max_length, top_k)
        if any(e is None for e in examples):
            built.skipped["prompt_too_long"] = built.skipped.get("prompt_too_long", 0) + 1
            continue
        built.groups.append(examples)
        built.stages.append(int(row.get("curriculum_stage") or 0))
    return built
