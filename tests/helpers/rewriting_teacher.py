"""A fake teacher's replies for the rewriting templates (disentangle, judge, textbook), written
from the demo passage in the request, for FakeOpenAI(responder=...)."""

from __future__ import annotations

import re

FACT = re.compile(r"([A-Z][a-z]+) has (\d+) (\w+) (\w+) and (\d+) (\w+) \w+\.")


def people(passage: str) -> list[tuple[str, int, str, int, str, str]]:
    """(name, count1, color1, count2, color2, thing) per demo fact sentence."""
    return [(n, int(a), ca, int(b), cb, t) for n, a, ca, t, b, cb in FACT.findall(passage)]


def passage_of(messages: list[dict]) -> str:
    user = messages[-1]["content"]
    return user.split("Text:", 1)[1].split("\n\nQuestion:", 1)[0].strip()


def disentangle_reply(passage: str) -> str:
    """Facts, then three questions: each person's total (which the fake server's own solver
    re-answers correctly) and one lookup it cannot re-answer (so verification drops it)."""
    found = people(passage)
    lines = ["Facts:"] + [f"- {n} has {a} {ca} {t} and {b} {cb} {t}."
                          for n, a, ca, b, cb, t in found]
    for n, a, ca, b, cb, t in found[:2]:
        lines += [f"Question: How many {t} does {n} have in total?",
                  f"Reasoning: {n} has {a} {ca} {t} and {b} {cb} {t}. {a} + {b} = {a + b}.",
                  f"Answer: {a + b}"]
    n, a, ca, _, _, t = found[0]
    lines += [f"Question: How many {ca} {t} does {n} have?",
              f"Reasoning: The text says {n} has {a} {ca} {t}.", f"Answer: {a}"]
    return "\n".join(lines)


def textbook_reply(passage: str) -> str:
    found = people(passage)
    facts = " ".join(f"{n} has {a} {ca} {t} and {b} {cb} {t}." for n, a, ca, b, cb, t in found)
    totals = " ".join(f"So {n} has {a + b} {t} in total." for n, a, ca, b, cb, t in found)
    return f"Lesson. {facts} {totals}"


def responder(*, judge_low_for_second: bool = True):
    """Replies by request kind; None leaves the fake server's own solver to answer."""

    def reply(messages: list[dict]) -> str | None:
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        if system.startswith("You write study material"):
            return disentangle_reply(passage_of(messages))
        if system.startswith("You are a teacher"):
            return textbook_reply(passage_of(messages))
        if system.startswith("You grade solutions"):
            user = messages[-1]["content"]
            second = people(passage_of(messages))[1][0]
            low = judge_low_for_second and f"does {second} have" in user
            return ("Reason: the steps skip a fact.\nScore: 2" if low
                    else "Reason: every step follows from the text.\nScore: 5")
        return None

    return reply
