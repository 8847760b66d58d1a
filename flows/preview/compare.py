"""`stairs prompts compare`: the same corpus rows through two variants of a curriculum (two
templates, two teachers, two sampling settings), each a full trial (flows/preview/trial.py), side
by side with the rows where they disagree."""

from __future__ import annotations

from pathlib import Path

import yaml

from flows.answers import normalize_answer
from flows.preflight import require
from flows.preview.trial import trial
from flows.spec import Curriculum, SpecError, with_changes
from flows.workspace import Workspace


def template_changes(ref: str) -> dict:
    """A template name ('rationale', from the curriculum's prompts folder) or a template file
    ('drafts/rationale.yaml': the file's folder becomes generate.prompts_dir)."""
    if ref.endswith(".yaml"):
        path = Path(ref).expanduser().resolve()
        return {"generate.template": path.stem, "generate.prompts_dir": str(path.parent)}
    return {"generate.template": ref}


def variant_changes(ref: str) -> dict:
    """One side of a comparison: a template (see template_changes) or curriculum keys to change,
    'teacher.temperature=0.8,teacher.model=other' (values read as YAML: 0.8 is a number)."""
    if "=" not in ref:
        return template_changes(ref)
    changes = {}
    for part in ref.split(","):
        key, _, value = part.partition("=")
        if not key.strip() or "=" not in part:
            raise SpecError(f"variant {ref!r}: expected key=value[,key=value...]")
        changes[key.strip()] = yaml.safe_load(value)
    return changes


def variant(spec: Curriculum, ref: str) -> Curriculum:
    """The curriculum with one side's changes, through every pre-flight check."""
    return require(with_changes(spec, variant_changes(ref)))


def _first_items(rows: list[dict]) -> dict[tuple[int, int], dict]:
    """The first parsed item of each (corpus row, sample): a reply is the unit compared."""
    out: dict[tuple[int, int], dict] = {}
    for r in rows:
        out.setdefault((r["row"], r["sample"]), r)
    return out


def compare(spec: Curriculum, ws: Workspace, a: str, b: str, n: int) -> dict:
    specs = [variant(spec, ref) for ref in (a, b)]  # both checked before anything is asked
    sides = [{"label": ref, **trial(s, ws, n)} for ref, s in zip((a, b), specs)]
    first_a, first_b = _first_items(sides[0]["rows"]), _first_items(sides[1]["rows"])
    disagree = []
    for key in sorted(first_a.keys() | first_b.keys()):
        ra, rb = first_a.get(key), first_b.get(key)
        if ra and rb and ra["verdict"] == rb["verdict"] and (
                normalize_answer(ra["answer"]) == normalize_answer(rb["answer"])):
            continue
        some = ra or rb
        disagree.append({"row": key[0], "sample": key[1], "question": some["question"],
                         "gold": some["gold"],
                         "a": {k: (ra or {}).get(k) for k in ("answer", "verdict", "reply")},
                         "b": {k: (rb or {}).get(k) for k in ("answer", "verdict", "reply")}})
    return {"a": sides[0], "b": sides[1], "disagree": disagree}
