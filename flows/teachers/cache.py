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
_COLUMNS = ("key", "backend", "model", "response_json", "created_at", "prompt_tokens",
            "completion_tokens")
_SQLITE_INSERT = (f"INSERT OR IGNORE INTO {ResponseCache.__tablename__} ({', '.join(_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(_COLUMNS))})")
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


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
        batch is handled: a kill loses nothing that arrived. A key already stored (another run
        answered the same content first) is left as it is."""
        now = utcnow()
        rows = [(key, backend, model, reply.to_json(), now, reply.prompt_tokens,
                 reply.completion_tokens) for key, reply in answers if reply.error is None]
        if not rows:
            return
        if self._conn is None:
            self._conn = self.engine.connect()
        if self.engine.dialect.name == "sqlite":
            self._put_sqlite(rows)
        else:
            self._put_core(rows)
        self.written += len(rows)

    def _put_sqlite(self, rows: list[tuple]) -> None:
        """Straight to the sqlite3 driver: at 20 ms latency the loop commits ~1,000 small
        batches per 4,000 answers, and SQLAlchemy's statement handling was much of each put's
        CPU (median 62 against 106 ms per 4,000 rows in batches of 14, 5 alternating runs).
        created_at is written in the text form SQLAlchemy's SQLite DateTime reads back."""
        raw = self._conn.connection.driver_connection
        stamp = rows[0][4].strftime(_SQLITE_DATETIME)  # one `now` per put
        try:
            raw.executemany(_SQLITE_INSERT, [(*row[:4], stamp, *row[5:]) for row in rows])
            raw.commit()
        except BaseException:
            raw.rollback()
            raise

    def _put_core(self, rows: list[tuple]) -> None:
        records = [dict(zip(_COLUMNS, row)) for row in rows]
        try:
            self._conn.execute(self._insert, records)
            self._conn.commit()
        except IntegrityError:
            # Another run answered one of these first (same content): store the rest singly.
            self._conn.rollback()
            for record in records:
                try:
                    self._conn.execute(self._insert, record)
                    self._conn.commit()
                except IntegrityError:
                    self._conn.rollback()

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
