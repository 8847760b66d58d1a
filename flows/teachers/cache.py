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
               "created_at": utcnow(),
               "prompt_tokens": reply.prompt_tokens,
               "completion_tokens": reply.completion_tokens}
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(ResponseCache.__table__).values(**row))
            self.written += 1
        except IntegrityError:
            pass  # another run answered the same request first: same content, keep theirs
