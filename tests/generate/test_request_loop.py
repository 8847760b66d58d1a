"""What the request loop does for speed without changing what it writes: JSON columns
serialized once before the first request, the garbage collector frozen while it runs, shards
written by a thread that cannot fall far behind (flows/generate/dispatch.py,
flows/generate/writer.py, docs/benchmarks.md)."""

from __future__ import annotations

import gc
import json
import time

import pytest

from flows import spec as spec_mod
from flows.generate import generate
from flows.teachers import TeacherUnreachable
from tests.helpers.gen_helpers import generated, write_curriculum
from tests.helpers.openai_server import FakeOpenAI, content_key


def run_generate(path, ws):
    spec = spec_mod.load(path)
    run_id = ws.start_run(spec, "generate").id
    return run_id, generate(spec, ws, run_id, progress_bar=False)


def test_rows_carry_the_messages_and_sampling_that_were_sent(tmp_path, workspace):
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=6, teacher={"samples": 2,
                                                                          "seed": 11})
        run_id, summary = run_generate(path, workspace)
    assert summary.complete and summary.cpu_s > 0
    df = generated(workspace, run_id)
    assert df.height == 12
    for row in df.iter_rows(named=True):
        sampling = json.loads(row["sampling"])
        assert sampling["seed"] == 11 + row["sample_index"]
        # The server counts requests by (messages, seed): the row's are exactly one it got.
        assert srv.received[content_key(json.loads(row["messages"]), sampling["seed"])] == 1
    assert gc.get_freeze_count() == 0


def test_the_collector_is_unfrozen_when_the_loop_fails(tmp_path, workspace):
    threshold = gc.get_threshold()
    with FakeOpenAI() as srv:
        srv.reject_auth = True
        path = write_curriculum(tmp_path, srv.base_url, rows=3)
        with pytest.raises(TeacherUnreachable):
            run_generate(path, workspace)
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold  # the loop's own threshold is put back


def test_the_quick_row_check_agrees_with_arrow():
    """check_rows skips building an Arrow table for plain rows: every value it lets through
    must convert, and everything Arrow refuses must still raise."""
    import pyarrow as pa

    from flows.generate.rows import GENERATED_SCHEMA, check_rows

    plain = {"id": "a", "round": 0, "answer": "8", "prompt_tokens": 12, "error": None}
    check_rows([plain])
    for odd in ({"answer": "x\ud800"}, {"round": True}, {"prompt_tokens": 2**63},
                {"answer": 8}, {"round": "1"}):
        with pytest.raises((pa.ArrowException, UnicodeEncodeError, OverflowError)):
            check_rows([plain, {**plain, **odd}])
    # Odd but convertible (Arrow decides): bytes for a string, a whole float for an int.
    for fine in ({"answer": b"8"}, {"round": 1.0}, {"answer": "é"}):
        check_rows([{**plain, **fine}])
        pa.Table.from_pylist([{**plain, **fine}], GENERATED_SCHEMA)


def test_a_writer_that_falls_behind_makes_the_loop_wait():
    """A starved writer must not let shards pile up in memory: the loop waits for the oldest
    write once MAX_PENDING_WRITES are queued, and every row still lands, in order."""
    from flows.generate.writer import MAX_PENDING_WRITES, ShardWriter

    written = []

    class SlowStore:
        def write(self, table, **_):
            time.sleep(0.02)
            written.append(table.column("id").to_pylist())

    w = ShardWriter(SlowStore(), stage=None, parents=[], batch_rows=1, flush_seconds=60)
    most = 0
    for i in range(12):
        w.add([{"id": str(i)}])
        most = max(most, len(w._pending))
    w.flush()
    assert most <= MAX_PENDING_WRITES
    assert written == [[str(i)] for i in range(12)]
    assert (w.rows_written, w.shards) == (12, 12)
