"""A seeded generator of open-book reasoning problems about fictional people.

Each row is a short passage of facts ("Vorla has 3 red lanterns and 5 blue lanterns.") and a
question whose gold answer needs one or more steps over those facts. The people and numbers are
invented per row, so nothing can be memorized: a student has to read the passage and reason. That
is the knowledge-disentangled task the quickstart distils.

Difficulty knobs: people per passage (the extra people are distractors), colors (facts per
person), max_count (size of the numbers) and the task mix. Same settings and seed, same rows.
Named levels (corpus.demo.levels) are several such settings, each row tagged with its level.
"""

from __future__ import annotations

import random
from typing import Iterator

SYLLABLES = ["va", "lo", "ri", "zen", "mo", "ka", "thu", "bel", "qui", "dra", "no", "sel",
             "fi", "gor", "an", "tes", "mir", "ul", "pra", "ix"]
COLORS = ["red", "blue", "green", "yellow", "white", "black"]
THINGS = ["lanterns", "marbles", "kites", "shells", "buttons", "ribbons", "stones", "feathers"]

# Reasoning steps each task needs over the facts (lookups count as a step).
TASK_STEPS = {"lookup": 1, "sum": 2, "difference": 2, "compare": 2, "total": 3, "count": 3,
              "most": 3}


def _name(rng: random.Random, taken: set[str]) -> str:
    while True:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
        if name not in taken:
            taken.add(name)
            return name


def _fact(person: str, counts: dict[str, int], thing: str) -> str:
    parts = [f"{n} {color} {thing}" for color, n in counts.items()]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{person} has {listed}."


def make_row(rng: random.Random, *, people: int, colors: int, max_count: int,
             task: str) -> dict:
    taken: set[str] = set()
    names = [_name(rng, taken) for _ in range(max(people, 2 if task in ("compare", "difference") else 1))]
    palette = rng.sample(COLORS, colors)
    thing = rng.choice(THINGS)
    counts = {p: {c: rng.randint(1, max_count) for c in palette} for p in names}
    passage = " ".join(_fact(p, counts[p], thing) for p in names)
    a, color = names[0], palette[0]

    if task == "lookup":
        question = f"How many {color} {thing} does {a} have?"
        answer = counts[a][color]
    elif task == "sum":
        question = f"How many {thing} does {a} have in total?"
        answer = sum(counts[a].values())
    elif task == "difference":
        b = names[1]
        # Order the pair so the answer is never negative.
        if counts[a][color] < counts[b][color]:
            a, b = b, a
        question = f"How many more {color} {thing} does {a} have than {b}?"
        answer = counts[a][color] - counts[b][color]
    elif task == "compare":
        b = names[1]
        while counts[a][color] == counts[b][color]:
            counts[b][color] = rng.randint(1, max_count)
        passage = " ".join(_fact(p, counts[p], thing) for p in names)
        question = f"Who has more {color} {thing}, {a} or {b}?"
        answer = a if counts[a][color] > counts[b][color] else b
    elif task == "total":
        question = f"How many {thing} do all of them have together?"
        answer = sum(sum(c.values()) for c in counts.values())
    elif task == "count":
        k = rng.randint(1, max_count - 1) if max_count > 1 else 0
        question = f"How many people have more than {k} {color} {thing}?"
        answer = sum(1 for p in names if counts[p][color] > k)
    elif task == "most":
        totals = {p: sum(counts[p].values()) for p in names}
        top = max(totals.values())
        while list(totals.values()).count(top) > 1:  # make the winner unique
            p = rng.choice([p for p in names if totals[p] == top])
            counts[p][palette[0]] += 1
            totals[p] += 1
            top = max(totals.values())
        passage = " ".join(_fact(p, counts[p], thing) for p in names)
        question = f"Who has the most {thing} in total?"
        answer = max(totals, key=totals.get)
    else:
        raise ValueError(f"unknown demo task {task!r}")
    return {"passage": passage, "question": question, "answer": str(answer), "task": task,
            "steps": TASK_STEPS[task], "people": len(names), "colors": colors}


def generate(rows: int, *, seed: int = 0, people: int = 2, colors: int = 2, max_count: int = 9,
             tasks: list[str] | tuple[str, ...] = ("sum",)) -> Iterator[dict]:
    """Yield `rows` problems; tasks cycle in order so every mix is balanced and reproducible."""
    rng = random.Random(seed)
    for i in range(rows):
        yield make_row(rng, people=people, colors=colors, max_count=max_count,
                       task=tasks[i % len(tasks)])


def level_records(levels: dict, *, seed: int = 0) -> Iterator[tuple[str, int, dict, None, str]]:
    """(source, line, record, error, raw) for every row of every named level: level k draws from
    its own seed (seed * 1000 + k), so adding a level after it never changes its rows."""
    line = 0
    for k, (name, lv) in enumerate(levels.items()):
        for row in generate(lv.rows, seed=seed * 1000 + k, people=lv.people, colors=lv.colors,
                            max_count=lv.max_count, tasks=lv.tasks):
            line += 1
            yield f"demo:{name}", line, {**row, "level": name}, None, ""
