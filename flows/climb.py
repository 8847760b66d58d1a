"""A curriculum across rounds (staircase.schedule): which corpus problems each round's teacher
is asked about, and the held-out rows of each difficulty level.

Rows carry their demo level in `meta` (flows/ingest/demo.py: level_records). Round k's new
problems come from its scheduled levels, split by the round's weights (evenly by default), each
level's train rows taken in id order (ids are content hashes: a fixed pseudo-random order) past
the ones earlier rounds were already asked about, so no problem is new twice. Its replayed
problems (`replay` of `rows`) are drawn from the new problems of earlier rounds on other
(easier) levels, in an order that differs per round. Everything follows from the spec and the
corpus: a resumed or retried round asks about the same problems.
"""

from __future__ import annotations

import hashlib
import json

from flows.spec import Curriculum, RoundSpec, TeacherSpec


class ScheduleError(ValueError):
    """The schedule asks for more rows of a level than the corpus has."""


def level_of(row: dict) -> str | None:
    meta = row.get("meta")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            return None
    return meta.get("level") if isinstance(meta, dict) else None


def by_level(rows: list[dict]) -> dict[str, list[dict]]:
    """Rows grouped by level, each group in id order."""
    groups: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        groups.setdefault(level_of(row) or "", []).append(row)
    return groups


def ids_digest(rows: list[dict]) -> str:
    """A short hash of the rows' ids: the same held-out rows have the same digest."""
    return hashlib.sha256("\n".join(sorted(r["id"] for r in rows)).encode()).hexdigest()[:16]


def with_sampling(teacher: TeacherSpec, entry: RoundSpec | None) -> TeacherSpec:
    """The teacher with a scheduled round's samples and temperature (where the entry sets them)."""
    changes = {} if entry is None else {k: v for k, v in (
        ("samples", entry.samples), ("temperature", entry.temperature)) if v is not None}
    return teacher.model_copy(update=changes) if changes else teacher


def _new_counts(entry: RoundSpec) -> dict[str, int]:
    """New problems per level: `weights` shares of the round's new rows (largest remainders
    go to the levels listed first, so the counts add up exactly)."""
    new = entry.rows - round(entry.rows * entry.replay)
    weights = entry.weights or [1] * len(entry.levels)
    total = sum(weights)
    counts = [new * w // total for w in weights]
    for i in sorted(range(len(weights)), key=lambda i: -(new * weights[i] % total))[
            :new - sum(counts)]:
        counts[i] += 1
    return dict(zip(entry.levels, counts))


def round_sources(spec: Curriculum, corpus_rows: list[dict], index: int
                  ) -> tuple[list[dict], dict[str, dict[str, int]]]:
    """Round `index`'s problems and how many of each level are new / replayed."""
    sc = spec.staircase
    groups = by_level(corpus_rows)
    used = {name: 0 for name in groups}  # problems of each level earlier rounds took as new
    earlier: list[dict] = []  # the new problems of earlier rounds
    chosen: list[dict] = []
    for k in range(index + 1):
        entry = sc.round_entry(k)
        new_rows = []
        for name, n in _new_counts(entry).items():
            pool = groups.get(name, [])
            start = used.get(name, 0)
            if start + n > len(pool):
                raise ScheduleError(
                    f"staircase.schedule: round {k} asks for {n} new problems of level "
                    f"{name!r} after {start} in earlier rounds, but the level has {len(pool)} "
                    f"train rows; raise corpus.demo.levels.{name}.rows")
            new_rows += pool[start:start + n]
            used[name] = start + n
        if k == index:
            replay_n = entry.rows - len(new_rows)
            pool = [r for r in earlier if level_of(r) not in entry.levels] or earlier
            pool = sorted(pool, key=lambda r: hashlib.sha256(f"{k}:{r['id']}".encode()).digest())
            replayed = pool[:replay_n]
            chosen = [{**r, "replayed": False} for r in new_rows] + [
                {**r, "replayed": True} for r in replayed]
        earlier += new_rows
    counts: dict[str, dict[str, int]] = {}
    for r in chosen:
        c = counts.setdefault(level_of(r) or "", {"new": 0, "replay": 0})
        c["replay" if r["replayed"] else "new"] += 1
    return chosen, counts
