"""The response cache: teacher answers in the catalog's `responsecache` table, keyed by
request_key() (content, not run), so every run shares it. An answer is written the moment it
arrives, which is what bounds a crash's loss to the requests in flight.

Only answers that became rows are stored (flows/generate/dispatch.py checks them first): a
failed request must be sent again next time, and a reply no row can hold must not be served
again to every later run.
"""

from __future__ import annotations

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError

from flows.teachers.base import Reply
from storage.tables import ResponseCache, utcnow

LOOKUP_CHUNK = 500  # keys per IN (...) query: well under SQLite's variable limit


class ResponseCacheStore:
    def __init__(self, catalog):
        self.engine = catalog.engine
        self.hits = 0
        self.misses = 0
        self.written = 0
        self._conn = None
        self._insert = insert(ResponseCache.__table__)

    def lookup(self, keys: list[str]) -> dict[str, Reply]:
        found: dict[str, Reply] = {}
        table = ResponseCache.__table__
        with self.engine.connect() as conn:
            for i in range(0, len(keys), LOOKUP_CHUNK):
                chunk = keys[i:i + LOOKUP_CHUNK]
                rows = conn.execute(select(table.c.key, table.c.response_json)
                                    .where(table.c.key.in_(chunk)))
                for key, blob in rows:
                    found[key] = Reply.from_json(blob)
        return found

    def present(self, keys: list[str]) -> set[str]:
        """Which of the keys have a cached answer (keys only: nothing is loaded)."""
        table = ResponseCache.__table__
        found: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(keys), LOOKUP_CHUNK):
                found.update(conn.execute(select(table.c.key).where(
                    table.c.key.in_(keys[i:i + LOOKUP_CHUNK]))).scalars())
        return found

    def put(self, backend: str, model: str, answers: list[tuple[str, Reply]]) -> None:
        """Store answers that arrived together, in one transaction, committed before the next
        batch is handled: a kill loses nothing that arrived."""
        now = utcnow()
        rows = [{"key": key, "backend": backend, "model": model,
                 "response_json": reply.to_json(), "created_at": now,
                 "prompt_tokens": reply.prompt_tokens,
                 "completion_tokens": reply.completion_tokens}
                for key, reply in answers if reply.error is None]
        if not rows:
            return
        if self._conn is None:
            self._conn = self.engine.connect()
        try:
            self._conn.execute(self._insert, rows)
            self._conn.commit()
        except IntegrityError:
            # Another run answered one of these first (same content): store the rest singly.
            self._conn.rollback()
            for row in rows:
                try:
                    self._conn.execute(self._insert, row)
                    self._conn.commit()
                except IntegrityError:
                    self._conn.rollback()
                    continue
        self.written += len(rows)

    def evict(self, keys: list[str]) -> None:
        """Delete answers that can no longer be used (cached unchecked by an older version)."""
        table = ResponseCache.__table__
        with self.engine.begin() as conn:
            for i in range(0, len(keys), LOOKUP_CHUNK):
                conn.execute(delete(table).where(table.c.key.in_(keys[i:i + LOOKUP_CHUNK])))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
