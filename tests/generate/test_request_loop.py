"""What the request loop does for speed without changing what it writes: JSON columns
serialized once before the first request, the garbage collector frozen while it runs
(flows/generate/dispatch.py, docs/benchmarks.md)."""

from __future__ import annotations

import gc
import json

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
    with FakeOpenAI() as srv:
        srv.reject_auth = True
        path = write_curriculum(tmp_path, srv.base_url, rows=3)
        with pytest.raises(TeacherUnreachable):
            run_generate(path, workspace)
    assert gc.get_freeze_count() == 0
