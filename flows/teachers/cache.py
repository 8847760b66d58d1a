"""The response cache: teacher answers in the catalog's `responsecache` table, keyed by
request_key() (content, not run), so every run shares it. An answer is recorded the moment it
arrives, which is what bounds a crash's loss to the requests in flight: committed to the catalog,
or, for a generate batch over a SQLite catalog, appended to its answer journal and folded into
the catalog a shard at a time (flows/teachers/journal.py). Lookups read the catalog and every
journal, so a journal's answers are found exactly as committed ones are.

Only answers that became rows are stored (flows/generate/dispatch.py checks them first): a
failed request must be sent again next time, and a reply no row can hold must not be served
again to every later run.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque

from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from flows.teachers import journal as journals
from flows.teachers.base import Reply
from storage.tables import ResponseCache, utcnow

LOOKUP_CHUNK = 500  # keys per IN (...) query: well under SQLite's variable limit
_COLUMNS = ("key", "backend", "model", "response_json", "created_at", "prompt_tokens",
            "completion_tokens")
_SQLITE_INSERT = (f"INSERT OR IGNORE INTO {ResponseCache.__tablename__} ({', '.join(_COLUMNS)}) "
                  f"VALUES ({', '.join('?' * len(_COLUMNS))})")
_SQLITE_DATETIME = "%Y-%m-%d %H:%M:%S.%f"


class ResponseCacheStore:
    def __init__(self, catalog, *, journal: bool = False):
        """journal=True: put() appends to an answer journal instead of committing, and fold()
        (the shard writer calls it before each shard) moves the answers into the catalog; only
        for a SQLite file catalog, others commit per put() as before."""
        self.engine = catalog.engine
        self.hits = 0
        self.misses = 0
        self.written = 0
        self._conn = None
        self._insert = insert(ResponseCache.__table__)
        self._journals = journals.folder_for(self.engine)
        self._journaling = journal and self._journals is not None
        self._journal: journals.Journal | None = None
        self._unfolded: deque[tuple] = deque()  # journaled, not yet in the catalog
        self._fold_failed = False
        # Journals are rotated at ROTATE_BYTES so a long stage does not keep a second copy of
        # all its answers on disk: a full one is removed once every answer in it is folded.
        self._journaled_rows = 0  # answers appended to any journal of this store
        self._folded_rows = 0  # of those, folded into the catalog (in order: FIFO)
        self._full: list[tuple[journals.Journal, int]] = []  # (journal, answers up to its end)
        self._full_lock = threading.Lock()

    def _journaled(self, keys: list[str]) -> dict[str, str]:
        """key -> response_json of the wanted keys in live journals (dead ones are folded into
        the catalog first, so the catalog query that follows finds those)."""
        live = journals.read_all(self._journals, self._store_journaled)
        if not live:
            return {}
        wanted = set(keys)
        return {row[0]: row[3] for row in live if row[0] in wanted}

    def lookup(self, keys: list[str]) -> dict[str, Reply]:
        found: dict[str, Reply] = {}
        journaled = self._journaled(keys)
        table = ResponseCache.__table__
        with self.engine.connect() as conn:
            for i in range(0, len(keys), LOOKUP_CHUNK):
                chunk = keys[i:i + LOOKUP_CHUNK]
                rows = conn.execute(select(table.c.key, table.c.response_json)
                                    .where(table.c.key.in_(chunk)))
                for key, blob in rows:
                    found[key] = Reply.from_json(blob)
        for key, blob in journaled.items():
            if key not in found:  # the catalog's copy, when there is one, came first
                found[key] = Reply.from_json(blob)
        return found

    def present(self, keys: list[str]) -> set[str]:
        """Which of the keys have a cached answer (keys only: nothing is loaded)."""
        table = ResponseCache.__table__
        found: set[str] = set(self._journaled(keys))
        with self.engine.connect() as conn:
            for i in range(0, len(keys), LOOKUP_CHUNK):
                found.update(conn.execute(select(table.c.key).where(
                    table.c.key.in_(keys[i:i + LOOKUP_CHUNK]))).scalars())
        return found

    def put(self, backend: str, model: str, answers: list[tuple[str, Reply]]) -> None:
        """Record answers that arrived together before the next batch is handled: a kill loses
        nothing that arrived. In the journal (one write) or in one committed transaction. A key
        already stored (another run answered the same content first) is left as it is."""
        if self._journaling:
            self._put_journal([(key, backend, model, reply.to_json(), reply.prompt_tokens,
                                reply.completion_tokens)
                               for key, reply in answers if reply.error is None])
            return
        now = utcnow()
        rows = [(key, backend, model, reply.to_json(), now, reply.prompt_tokens,
                 reply.completion_tokens) for key, reply in answers if reply.error is None]
        if not rows:
            return
        if self.engine.dialect.name == "sqlite":
            self._put_sqlite(rows)
        else:
            self._put_core(rows)
        self.written += len(rows)

    def _put_journal(self, rows: list[tuple]) -> None:
        """Rows without created_at (stamped when folded): per put, on the request loop's thread,
        only what a kill must not lose."""
        if rows:
            if self._journal is None:
                self._journal = journals.Journal(self._journals)
            elif self._journal.size >= journals.ROTATE_BYTES:
                with self._full_lock:
                    self._full.append((self._journal, self._journaled_rows))
                self._journal = journals.Journal(self._journals)
            self._journal.append(rows)
            self._journaled_rows += len(rows)
            self._unfolded.extend(rows)
            self.written += len(rows)

    def fold(self) -> None:
        """Move the journaled answers into the catalog, in one transaction. Called from the
        shard writer's thread while put() appends on the loop's: a deque is safe for that."""
        rows = [self._unfolded.popleft() for _ in range(len(self._unfolded))]
        if not rows:
            return
        try:
            self._store_journaled(rows)
        except BaseException:
            self._fold_failed = True  # the journal file keeps them: close() must not remove it
            raise
        self._folded_rows += len(rows)
        with self._full_lock:
            done = [j for j, end in self._full if end <= self._folded_rows]
            self._full = [(j, end) for j, end in self._full if end > self._folded_rows]
        for j in done:
            j.close(remove=True)

    def _store_journaled(self, rows: list[tuple]) -> None:
        """Journaled rows into the catalog, in one transaction, stamped with this moment."""
        stamp = utcnow().strftime(_SQLITE_DATETIME)
        with self.engine.connect() as conn:
            self._insert_sqlite(conn.connection.driver_connection,
                                [(*row[:4], stamp, *row[4:]) for row in rows])

    def _put_sqlite(self, rows: list[tuple]) -> None:
        """Straight to the sqlite3 driver: at 20 ms latency the loop commits ~1,000 small
        batches per 4,000 answers, and SQLAlchemy's statement handling was much of each put's
        CPU (median 62 against 106 ms per 4,000 rows in batches of 14, 5 alternating runs).
        created_at is written in the text form SQLAlchemy's SQLite DateTime reads back."""
        if self._conn is None:
            self._conn = self.engine.connect()
        stamp = rows[0][4].strftime(_SQLITE_DATETIME)  # one `now` per put
        self._insert_sqlite(self._conn.connection.driver_connection,
                            [(*row[:4], stamp, *row[5:]) for row in rows])

    @staticmethod
    def _insert_sqlite(raw, rows: list[tuple]) -> None:
        try:
            raw.executemany(_SQLITE_INSERT, rows)
            raw.commit()
        except BaseException as e:
            try:
                raw.rollback()
            except sqlite3.Error:
                pass  # a full disk can fail the rollback too; the first error is the one to say
            if isinstance(e, sqlite3.Error):
                # As SQLAlchemy reports the driver's errors everywhere else in the catalog, so
                # a full disk here is the same one-line "catalog error" (flows/cli.py).
                raise OperationalError(_SQLITE_INSERT, None, e) from e
            raise

    def _put_core(self, rows: list[tuple]) -> None:
        if self._conn is None:
            self._conn = self.engine.connect()
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
        """Fold what is left; the journal is removed only once all of it is in the catalog
        (otherwise the next lookup, anywhere, folds it)."""
        if self._journal is not None:
            try:
                self.fold()
            finally:
                kept = self._fold_failed or bool(self._unfolded)
                for j, _ in self._full:
                    j.close(remove=not kept)
                self._full = []
                self._journal.close(remove=not kept)
                self._journal = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
