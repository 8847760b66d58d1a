"""`teacher.base_url` as a list of replicas, through the generate stage against two loopback
fake servers: requests spread over both, and when one dies mid-run the rows it had in flight
are answered by the other, nothing is lost or answered twice, and the dead replica, back on
its port, is used again after `replica_retry_s`."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from pydantic import ValidationError

from flows.generate import generate
from flows.spec import TeacherSpec
from flows.spec import load as load_curriculum
from tests.helpers.gen_helpers import generated, write_curriculum
from tests.helpers.openai_server import FakeOpenAI

ROWS = 80


def test_a_replica_killed_mid_run_loses_and_duplicates_nothing(tmp_path, workspace):
    with FakeOpenAI(latency=0.1) as a, FakeOpenAI(latency=0.1) as b:
        path = write_curriculum(tmp_path, a.base_url, rows=ROWS,
                                teacher={"base_url": [a.base_url, b.base_url], "concurrency": 2,
                                         "replica_retry_s": 0.5})
        spec = load_curriculum(path)
        seen = {}

        def kill_then_revive():
            while sum(a.answered.values()) < 6:
                time.sleep(0.005)
            a.kill()
            seen["at_kill"] = Counter(a.answered)
            seen["in_flight"] = set(a.received) - set(a.answered)
            time.sleep(0.3)
            a.revive()
            seen["revived"] = time.monotonic()

        killer = threading.Thread(target=kill_then_revive)
        killer.start()
        run_id = workspace.start_run(spec, "generate").id
        summary = generate(spec, workspace, run_id, progress_bar=False)
        seen["done"] = time.monotonic()
        killer.join(10)

        rows = generated(workspace, run_id)
        assert summary.complete and rows.height == ROWS == rows["id"].n_unique()
        answered = a.answered + b.answered
        assert len(answered) == ROWS and set(answered.values()) == {1}  # no answer paid twice
        # A had requests in flight when it died; each was answered once, elsewhere or later.
        assert seen["in_flight"] and all(answered[k] == 1 for k in seen["in_flight"])
        assert not (set(seen["at_kill"]) & set(b.answered))
        # Both replicas took work, and the dead one was tried again once it was back.
        assert sum(b.answered.values()) > 0
        assert sum(a.answered.values()) > sum(seen["at_kill"].values())
        assert summary.transient_errors.get("connection", 0) >= len(seen["in_flight"])


def test_replica_lists_are_checked_like_one_url():
    one = TeacherSpec(backend="openai", model="m", base_url=["http://a:1/v1"])
    assert one.base_url == "http://a:1/v1"  # a list of one is that URL
    for bad, why in ((["http://a:1/v1", "http://a:1/v1"], "listed twice"), ([], "empty list"),
                     (["http://a:1/v1", "ftp://b/v1"], "ftp://b/v1")):
        with pytest.raises(ValidationError, match=why):
            TeacherSpec(backend="openai", model="m", base_url=bad)
    with pytest.raises(ValidationError, match="one base_url"):
        TeacherSpec(backend="openai", model="m", base_url=["http://a/v1", "http://b/v1"],
                    batch_api=True)
