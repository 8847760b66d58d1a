"""The response cache's writes: what the SQLite fast path stores is what the ORM and lookups
read back, and a key another run stored first is kept, not overwritten or failed on."""

from __future__ import annotations

from datetime import timezone

from sqlalchemy import insert
from sqlmodel import Session, select

from flows.teachers.base import Reply
from flows.teachers.cache import ResponseCacheStore
from storage.tables import ResponseCache, utcnow


def test_put_reads_back_through_lookup_and_the_orm(workspace):
    store = ResponseCacheStore(workspace.catalog)
    before = utcnow()
    store.put("openai", "m", [("k1", Reply(text="Answer: 7", finish_reason="stop",
                                           prompt_tokens=12, completion_tokens=3)),
                              ("k2", Reply(error="request_failed: http 400"))])
    store.close()
    assert store.written == 1  # the failed answer is not cached
    found = store.lookup(["k1", "k2"])
    assert list(found) == ["k1"]
    assert (found["k1"].text, found["k1"].prompt_tokens, found["k1"].completion_tokens) == \
        ("Answer: 7", 12, 3)
    with Session(workspace.catalog.engine) as s:
        row = s.exec(select(ResponseCache)).one()
    assert (row.backend, row.model, row.prompt_tokens) == ("openai", "m", 12)
    # Written as text by the fast path, read back as the same instant SQLAlchemy would store.
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(
        tzinfo=timezone.utc)
    assert 0 <= (created - before).total_seconds() < 60


def test_a_key_another_run_stored_first_is_kept_and_the_rest_stored(workspace):
    with workspace.catalog.engine.begin() as conn:  # "another run", through SQLAlchemy
        conn.execute(insert(ResponseCache.__table__), [{
            "key": "k1", "backend": "openai", "model": "m", "created_at": utcnow(),
            "response_json": Reply(text="first").to_json()}])
    store = ResponseCacheStore(workspace.catalog)
    store.put("openai", "m", [("k1", Reply(text="second")), ("k2", Reply(text="new"))])
    store.close()
    found = store.lookup(["k1", "k2"])
    assert (found["k1"].text, found["k2"].text) == ("first", "new")
