"""Where a model came from, from the catalog alone: the model, its parent, its parent's parent
... back to the base (`Model.parent_id`), the shards each one was trained on (`ModelShard`), and
every shard those came from (`ShardParent`) back to the corpus, each with the stage that wrote
it: its run, round, template and teacher. `stairs lineage catalog:<id>` prints it."""

from __future__ import annotations

import json

from flows.workspace import Workspace
from storage.tables import Model, Shard, Stage


def model_lineage(ws: Workspace, model_id: int) -> dict:
    """{"models": [model, parent, ..., base], "shards": [every ancestor shard, newest first]};
    KeyError for an unknown id."""
    catalog = ws.catalog
    chain = catalog.model_lineage(model_id)
    if not chain:
        raise KeyError(model_id)
    models, frontier = [], []
    for m in chain:
        trained_on = catalog.model_training_shards(m.id)
        models.append(_model_row(m, trained_on))
        frontier += trained_on
    shards: dict[int, dict] = {}
    stages: dict[int, Stage] = {}
    while frontier:  # breadth first up the shard graph; a shard is listed once
        shard = frontier.pop(0)
        if shard.id in shards:
            continue
        parents = catalog.shard_parents(shard.id)
        if shard.stage_id not in stages:
            stages[shard.stage_id] = catalog.get(Stage, shard.stage_id)
        shards[shard.id] = _shard_row(shard, stages[shard.stage_id], parents)
        frontier += parents
    return {"model_id": model_id, "models": models,
            "shards": sorted(shards.values(), key=lambda s: -s["id"])}


def _model_row(m: Model, trained_on: list[Shard]) -> dict:
    return {"id": m.id, "name": m.name, "kind": m.kind, "format": m.format, "quant": m.quant,
            "run_id": m.run_id, "round": m.round_index, "path": m.path, "bytes": m.bytes,
            "parent_id": m.parent_id, "trained_on": [s.id for s in trained_on]}


def _shard_row(shard: Shard, stage: Stage | None, parents: list[Shard]) -> dict:
    params = json.loads(stage.params_json or "{}") if stage else {}
    return {"id": shard.id, "kind": shard.kind, "rows": shard.rows, "run_id": shard.run_id,
            "stage": stage.name if stage else None,
            "round": stage.round_index if stage else None,
            "template": params.get("template"), "template_hash": params.get("template_hash"),
            "teacher": params.get("teacher"), "path": shard.path, "checksum": shard.checksum,
            "parents": [p.id for p in parents]}
