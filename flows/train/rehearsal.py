"""Rehearsal (staircase.schedule[k].rehearse): a round's student also trains on a seeded share of
the rows earlier rounds kept, not only on its own round's. Climb run 4 (docs/results.md) showed
why: each round's student, trained mostly on the new harder rows, lost 10-20 points on the
levels earlier rounds had taught it. STaR retrains on everything kept so far (share 1.0)."""

from __future__ import annotations

import random

from flows.spec import Curriculum
from flows.workspace import Workspace
from storage.tables import Shard


def rehearsal_share(spec: Curriculum, round_index: int) -> float:
    entry = spec.staircase.round_entry(round_index)
    return entry.rehearse if entry is not None else 0.0


def earlier_shards(ws: Workspace, run_id: str, round_index: int) -> list[Shard]:
    """The curated train shards every earlier round trained on (its newest curate stage: after a
    retry, the retry's)."""
    return [sh for k in range(round_index)
            for sh in ws.stage_shards(run_id, "curate", "train", round_index=k)]


def rehearsed_rows(rows: list[dict], share: float, seed: int) -> list[dict]:
    """`share` of `rows` (every earlier round's, together), drawn with `seed`, kept in their
    stored order."""
    n = round(share * len(rows))
    if n >= len(rows):
        return list(rows)
    picked = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in picked]
