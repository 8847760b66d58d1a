"""Resume: a generate stage started again in the same run and round, with the same fingerprint,
adopts the shards earlier attempts registered (the files stay where they are; the new stage
registers them too, so downstream stages read one complete stage) and skips their requests.

Adoption goes by row id, not by file: a shard whose rows another adopted shard already holds
is skipped, and one that holds some of them is adopted as a new shard of only its new rows.
Attempts that overlapped (two processes in one run, before runs were locked) therefore leave
one row per id in the stage that adopts them.
"""

from __future__ import annotations

from storage.tables import Shard


def earlier_attempts(ws, run_id: str, round_index: int, fingerprint: str, current_id: int):
    return [s for s in ws.catalog.stages(run_id)
            if s.name == "generate" and s.round_index == round_index
            and s.fingerprint == fingerprint and s.id != current_id and s.reused_from_id is None]


def adopt(ws, stage, attempts, kind: str = "generated") -> tuple[list[Shard], set[str]]:
    """Register the earlier attempts' shards of `kind` under `stage`, one row per id; return
    them and the request hashes they already answer."""
    seen_paths: set[str] = set()
    seen_ids: set[str] = set()
    adopted: list[Shard] = []
    for attempt in attempts:
        if attempt.status == "running" and kind == "generated":
            # Its process died without a word (kill -9): say so instead of leaving it "running".
            ws.catalog.finish_stage(attempt.id, "failed", error=f"process died; resumed by "
                                    f"stage {stage.id}")
        for shard in ws.catalog.shards(attempt.id, kind):
            if shard.path in seen_paths or not ws.store.verify(shard):
                continue
            seen_paths.add(shard.path)
            ids = ws.store.scan([shard]).select("id").collect()["id"]
            new = ~ids.is_in(list(seen_ids))
            parents = ws.catalog.shard_parents(shard.id)
            if new.all():
                copy = Shard(run_id=stage.run_id, stage_id=stage.id, kind=shard.kind,
                             path=shard.path, rows=shard.rows, bytes=shard.bytes,
                             checksum=shard.checksum, arrow_schema=shard.arrow_schema)
                adopted.append(ws.catalog.register_shard(copy, parents))
            elif new.any():
                rows = ws.store.table([shard]).filter(new.to_arrow())
                adopted.append(ws.store.write(rows, stage=stage, kind=kind,
                                              parents=parents))
            seen_ids.update(ids.to_list())
    if not adopted:
        return [], set()
    done = ws.store.scan(adopted).select("request_hash").collect()
    return adopted, set(done["request_hash"].to_list())
