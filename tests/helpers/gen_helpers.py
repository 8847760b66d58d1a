"""Shared helpers for the generate tests: curricula pointing at a fake OpenAI server."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from flows.ingest import demo


def demo_jsonl(path: Path, rows: int = 30, seed: int = 0) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in demo.generate(rows, seed=seed, people=2, colors=2, max_count=9,
                                 tasks=["sum"]):
            f.write(json.dumps(row) + "\n")
    return path


def write_curriculum(folder: Path, base_url: str, *, rows: int = 30, teacher: dict | None = None,
                     generate: dict | None = None, name: str = "gen-test") -> Path:
    corpus = demo_jsonl(folder / "corpus.jsonl", rows)
    doc = {"name": name,
           "corpus": {"path": corpus.name, "format": "jsonl", "eval_fraction": 0.0},
           "teacher": {"backend": "openai", "model": "fake", "base_url": base_url,
                       "concurrency": 4, "max_retries": 8, **(teacher or {})},
           "generate": {"batch_rows": 8, **(generate or {})}}
    path = folder / "curriculum.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def generated(ws, run_id: str, round_index: int = 0):
    stage = ws.latest_stage("generate", run_id=run_id, round_index=round_index)
    return ws.store.scan(ws.shards(stage, "generated")).collect()
