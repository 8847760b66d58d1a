"""The response cache: teacher answers in the catalog's `responsecache` table, keyed by
request_key() (content, not run), so every run shares it. An answer is written the moment it
arrives, which is what bounds a crash's loss to the requests in flight.

Only successful answers are stored: a failed request must be sent again next time.
"""

from __future__ import annotations

from sqlalchemy import insert, select
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

    def put(self, key: str, backend: str, model: str, reply: Reply) -> None:
        if reply.error is not None:
            return
        row = {"key": key, "backend": backend, "model": model, "response_json": reply.to_json(),
               "created_at": utcnow(), "prompt_tokens": reply.prompt_tokens,
               "completion_tokens": reply.completion_tokens}
        # One open connection and one short transaction per answer: committed before the next
        # answer is handled, so a kill loses nothing that arrived.
        if self._conn is None:
            self._conn = self.engine.connect()
        try:
            self._conn.execute(self._insert, row)
            self._conn.commit()
            self.written += 1
        except IntegrityError:
            self._conn.rollback()  # another run answered the same request first: keep theirs

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
