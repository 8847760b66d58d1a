from flows.answers import normalize_answer
from flows.ingest import demo

TASKS = ["lookup", "sum", "difference", "compare", "total", "count", "most"]


def test_same_seed_same_rows():
    a = list(demo.generate(50, seed=7, people=3, colors=3, tasks=TASKS))
    b = list(demo.generate(50, seed=7, people=3, colors=3, tasks=TASKS))
    assert a == b
    assert a != list(demo.generate(50, seed=8, people=3, colors=3, tasks=TASKS))


def _counts(passage: str) -> dict[str, dict[str, int]]:
    people = {}
    for sentence in passage.split(". "):
        name, _, rest = sentence.rstrip(".").partition(" has ")
        items = rest.replace(" and ", ", ").split(", ")
        people[name] = {i.split()[1]: int(i.split()[0]) for i in items}
    return people


def test_answers_follow_from_the_passage():
    """Recompute every gold answer from the passage text alone."""
    for row in demo.generate(200, seed=1, people=3, colors=2, tasks=TASKS):
        facts = _counts(row["passage"])
        q, gold = row["question"], row["answer"]
        names = list(facts)
        if row["task"] == "sum":
            assert int(gold) == sum(facts[names[0]].values())
        elif row["task"] == "total":
            assert int(gold) == sum(sum(c.values()) for c in facts.values())
        elif row["task"] == "most":
            totals = {p: sum(c.values()) for p, c in facts.items()}
            assert gold == max(totals, key=totals.get)
            assert sorted(totals.values())[-1] != sorted(totals.values())[-2]
        elif row["task"] == "compare":
            color = q.split()[3]
            a, b = q.rstrip("?").split(", ")[1].split(" or ")
            assert gold == (a if facts[a][color] > facts[b][color] else b)
        elif row["task"] == "difference":
            color = q.split()[3]
            a = q.split(" does ")[1].split(" have")[0]
            b = q.rstrip("?").split(" than ")[1]
            assert int(gold) == facts[a][color] - facts[b][color] >= 0
        elif row["task"] == "lookup":
            color = q.split()[2]
            a = q.split(" does ")[1].split(" have")[0]
            assert int(gold) == facts[a][color]
        assert normalize_answer(gold) == gold.lower()


def test_difficulty_knobs():
    row = next(demo.generate(1, people=4, colors=3, tasks=["total"]))
    assert row["people"] == 4 and row["colors"] == 3 and row["steps"] == 3
    assert len(_counts(row["passage"])) == 4
