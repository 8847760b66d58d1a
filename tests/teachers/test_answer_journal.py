"""Answer journals (flows/teachers/journal.py): a generate batch's answers are found by every
lookup while they are only journaled, a killed writer's journal is folded into the catalog by the
next lookup, a torn last line is skipped, and a journal whose answers did not all reach the
catalog is never removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlmodel import Session, select

from flows.teachers import journal as journals
from flows.teachers.base import Reply
from flows.teachers.cache import ResponseCacheStore
from storage.tables import ResponseCache

ROOT = Path(__file__).resolve().parents[2]


def in_catalog(workspace) -> set[str]:
    with Session(workspace.catalog.engine) as s:
        return {r.key for r in s.exec(select(ResponseCache))}


def folder(workspace) -> Path:
    return journals.folder_for(workspace.catalog.engine)


def test_journaled_answers_are_found_before_and_after_their_fold(workspace):
    writer = ResponseCacheStore(workspace.catalog, journal=True)
    writer.put("openai", "m", [("k1", Reply(text="Answer: 1", prompt_tokens=5)),
                               ("k2", Reply(error="request_failed: http 400"))])
    assert in_catalog(workspace) == set()  # journaled only
    other = ResponseCacheStore(workspace.catalog)  # another run's lookup, meanwhile
    assert other.present(["k1", "k2"]) == {"k1"}
    assert other.lookup(["k1"])["k1"].prompt_tokens == 5
    assert len(list(folder(workspace).glob("*.jsonl"))) == 1  # live: read, not folded

    writer.fold()
    assert in_catalog(workspace) == {"k1"}
    writer.put("openai", "m", [("k3", Reply(text="Answer: 3"))])
    writer.close()  # folds the rest, then removes its journal
    assert in_catalog(workspace) == {"k1", "k3"}
    assert list(folder(workspace).iterdir()) == []


def test_a_killed_writers_journal_is_folded_by_the_next_lookup(workspace, stairs_home):
    code = ("import os; from flows.workspace import Workspace; "
            "from flows.teachers.base import Reply; "
            "from flows.teachers.cache import ResponseCacheStore; "
            "c = ResponseCacheStore(Workspace.open().catalog, journal=True); "
            "c.put('openai', 'm', [('a', Reply(text='A')), ('b', Reply(text='B'))]); "
            "c.put('openai', 'm', [('c', Reply(text='C'))]); "
            "os._exit(9)")  # no close(), no fold: as a kill -9 would leave it
    env = {**os.environ, "STAIRS_HOME": str(stairs_home), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT)
    left = list(folder(workspace).glob("*.jsonl"))
    assert len(left) == 1 and in_catalog(workspace) == set()
    with open(left[0], "ab") as f:
        f.write(b'["d", "openai", "m", "{\\"te')  # a line its writer was killed in

    found = ResponseCacheStore(workspace.catalog).lookup(["a", "b", "c", "d"])
    assert {k: r.text for k, r in found.items()} == {"a": "A", "b": "B", "c": "C"}
    assert in_catalog(workspace) == {"a", "b", "c"}
    assert list(folder(workspace).glob("*.jsonl")) == []


def test_a_journal_whose_fold_failed_is_kept_for_the_next_lookup(workspace, monkeypatch):
    writer = ResponseCacheStore(workspace.catalog, journal=True)
    writer.put("openai", "m", [("k1", Reply(text="one"))])

    def locked(raw, rows):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(ResponseCacheStore, "_insert_sqlite", staticmethod(locked))
    with pytest.raises(RuntimeError, match="locked"):
        writer.close()
    monkeypatch.undo()
    assert len(list(folder(workspace).glob("*.jsonl"))) == 1
    assert ResponseCacheStore(workspace.catalog).lookup(["k1"])["k1"].text == "one"
    assert in_catalog(workspace) == {"k1"}  # folded by that lookup: its writer is closed


def test_a_full_journal_is_replaced_and_removed_once_folded(workspace, monkeypatch):
    monkeypatch.setattr(journals, "ROTATE_BYTES", 1)  # every put after the first rotates
    writer = ResponseCacheStore(workspace.catalog, journal=True)
    for k in ("a", "b", "c"):
        writer.put("openai", "m", [(k, Reply(text=k.upper()))])
    assert len(list(folder(workspace).glob("*.jsonl"))) == 3
    found = ResponseCacheStore(workspace.catalog).lookup(["a", "b", "c"])
    assert {k: r.text for k, r in found.items()} == {"a": "A", "b": "B", "c": "C"}
    writer.fold()  # everything in the two full journals is in the catalog now: they go
    assert len(list(folder(workspace).glob("*.jsonl"))) == 1
    assert in_catalog(workspace) == {"a", "b", "c"}
    writer.close()
    assert list(folder(workspace).glob("*.jsonl")) == []
