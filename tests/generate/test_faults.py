"""Nothing lost, nothing paid twice, under every fault (issue 19): the generate stage against the
loopback fake server (tests/helpers/openai_server.py) with odd reply shapes, poisoned cache
entries, a request that never gets through, an endpoint that is gone, other URLs for the same
model, overlapping earlier attempts, leftovers of killed writers and a nan Retry-After."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from flows import spec as spec_mod
from flows.cli import app
from flows.generate import generate
from flows.ingest import demo
from flows.teachers import TeacherUnreachable
from tests.helpers.gen_helpers import generated, write_curriculum
from tests.helpers.openai_server import FakeOpenAI, Faults


def demo_rows(n: int) -> list[dict]:
    # The same rows write_curriculum puts in the corpus (same generator, same seed).
    return list(demo.generate(n, seed=0, people=2, colors=2, max_count=9, tasks=["sum"]))


def run_generate(path, ws, run_id=None):
    spec = spec_mod.load(path)
    run_id = run_id or ws.start_run(spec, "generate").id
    return run_id, generate(spec, ws, run_id, progress_bar=False)


def cached_keys(ws) -> set[str]:
    with ws.catalog.engine.connect() as conn:
        return {k for (k,) in conn.execute(text("select key from responsecache"))}


# -- 1. a reply of an unexpected shape ----------------------------------------------------------
def test_odd_reply_shapes_become_rows_with_named_errors_and_never_poison_the_cache(
        tmp_path, workspace):
    rows = demo_rows(6)
    shapes = {rows[0]["passage"]: "content_parts", rows[1]["passage"]: "content_number",
              rows[2]["passage"]: "lone_surrogate", rows[3]["passage"]: "string_tokens",
              rows[4]["passage"]: "word_tokens"}
    with FakeOpenAI(shapes=shapes) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=6)
        run_id, first = run_generate(path, workspace)
        df = generated(workspace, run_id)
        by_passage = {r["passage"]: r for r in df.to_dicts()}
        # Normalised: the API's list-of-parts content, token counts sent as digit strings.
        for i in (0, 3, 5):
            row = by_passage[rows[i]["passage"]]
            assert row["error"] is None and row["answer"] == row["gold_answer"], row
        assert by_passage[rows[3]["passage"]]["prompt_tokens"] > 0
        # Unusable: one row each, with a named error, instead of an exception.
        assert by_passage[rows[1]["passage"]]["error"] == "bad_reply: content is a number, not text"
        assert by_passage[rows[2]["passage"]]["error"].startswith(
            "bad_reply: content is not valid Unicode")
        assert by_passage[rows[4]["passage"]]["error"].startswith(
            "bad_reply: usage.completion_tokens")
        assert first.complete and first.errors_by_reason == {"bad_reply": 3}
        # Only what became good rows is cached...
        assert len(cached_keys(workspace)) == 3
        # ...so a later run (another stage: max_rows changes the fingerprint, not the requests)
        # reads 3 answers from the cache and asks only for the 3 unusable ones again.
        sent = sum(srv.received.values())
        path = write_curriculum(tmp_path, srv.base_url, rows=6, generate={"max_rows": 100})
        _, second = run_generate(path, workspace)
        assert second.complete and second.cache_hits == 3
        assert sum(srv.received.values()) == sent + 3


def test_an_unusable_answer_already_in_the_cache_is_asked_again_not_served(tmp_path, workspace):
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=4)
        run_generate(path, workspace)
        keys = sorted(cached_keys(workspace))
        assert len(keys) == 4
        # What an older version cached without checking: content as a list of numbers, and a
        # lone surrogate (valid JSON, no valid UTF-8).
        bad = [json.dumps({"text": [1, 2], "finish_reason": "stop", "prompt_tokens": 3,
                           "completion_tokens": 4, "logprobs": None}),
               json.dumps({"text": "x\ud800", "finish_reason": "stop", "prompt_tokens": 3,
                           "completion_tokens": 4, "logprobs": None})]
        with workspace.catalog.engine.begin() as conn:
            for key, blob in zip(keys, bad):
                conn.execute(text("update responsecache set response_json = :b where key = :k"),
                             {"b": blob, "k": key})
        sent = sum(srv.received.values())
        path = write_curriculum(tmp_path, srv.base_url, rows=4, generate={"max_rows": 100})
        run_id, s = run_generate(path, workspace)
    assert s.complete and s.cache_evicted == 2 and s.cache_hits == 2
    assert sum(srv.received.values()) == sent + 2
    df = generated(workspace, run_id)
    assert df["error"].null_count() == df.height == 4
    assert (df["answer"] == df["gold_answer"]).all()


# -- 5. one request's failures are that request's -----------------------------------------------
def test_a_request_that_never_gets_through_is_left_for_the_next_run(tmp_path, workspace):
    rows = demo_rows(30)
    with FakeOpenAI(drop=(rows[7]["passage"],)) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=30, teacher={"max_retries": 2})
        run_id, first = run_generate(path, workspace)
    assert not first.complete and first.unanswered == 1 and first.answered == 29
    assert srv.statuses["disconnect"] == 3  # the first try and both retries
    assert generated(workspace, run_id).height == 29
    with FakeOpenAI(port=srv.port) as again:  # the endpoint lets it through now
        _, second = run_generate(path, workspace, run_id)
    assert second.complete and sum(again.received.values()) == 1
    df = generated(workspace, run_id)
    assert df.height == 30 and df["id"].n_unique() == 30


def test_an_endpoint_failing_every_request_stops_the_run(tmp_path, workspace):
    faults = Faults(server_error=1.0)
    with FakeOpenAI(faults=faults) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=60,
                                teacher={"max_retries": 0, "concurrency": 2})
        with pytest.raises(TeacherUnreachable, match="of the last 20 requests failed"):
            run_generate(path, workspace)
    assert sum(srv.received.values()) < 30  # it stopped instead of trying all 60


# -- 6. cache identity is the model, not the URL as typed ----------------------------------------
def test_the_same_model_behind_another_url_is_not_paid_twice(tmp_path, workspace):
    with FakeOpenAI() as a, FakeOpenAI() as b:
        path = write_curriculum(tmp_path, a.base_url, rows=8)
        run_generate(path, workspace)
        assert sum(a.received.values()) == 8
        for url in (f"http://localhost:{a.port}/v1", f"http://LOCALHOST:{a.port}/v1/",
                    f"http://127.0.0.1:{a.port}/v1/", b.base_url):  # b: another port
            run_generate(write_curriculum(tmp_path, url, rows=8), workspace)
        assert sum(a.received.values()) == 8 and sum(b.received.values()) == 0
        # Another model behind the same URL is another teacher: asked, not served from cache.
        path = write_curriculum(tmp_path, a.base_url, rows=8, teacher={"model": "other"})
        _, other = run_generate(path, workspace)
        assert other.cache_hits == 0 and sum(a.received.values()) == 16


# -- 2 (adoption) and 10: one row per id, and `stairs show` counts rows once ----------------------
def test_overlapping_attempts_are_adopted_by_row_id_and_counted_once(tmp_path, workspace):
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=20,
                                teacher={"max_requests": 8, "concurrency": 2})
        run_id, first = run_generate(path, workspace)
        assert first.budget_exhausted and first.rows_written == 8
        # A second process in the same run (before runs were locked) wrote the same rows
        # into a file of its own: register a copy of the first attempt's shard as its.
        done = workspace.latest_stage("generate", run_id=run_id)
        shard = workspace.shards(done, "generated")[0]
        twin = workspace.catalog.start_stage(run_id, "generate", round_index=0,
                                             fingerprint=done.fingerprint)
        workspace.catalog.finish_stage(twin.id, "stopped")
        copy = workspace.store.write(workspace.store.table([shard]), stage=twin,
                                     kind="generated")
        assert copy.path != shard.path
        while True:
            _, last = run_generate(path, workspace, run_id)
            if last.complete:
                break
    df = generated(workspace, run_id)
    assert df.height == 20 and df["id"].n_unique() == 20
    assert max(srv.received.values()) == 1
    shown = json.loads(CliRunner().invoke(app, ["show", run_id, "--json"]).stdout)
    assert shown["shards"]["generated"]["rows"] == 20 + copy.rows  # every file once


# -- 10. leftovers of a killed writer are swept when the stage starts again ----------------------
def test_a_stage_sweeps_what_killed_writers_left_in_its_folders(tmp_path, workspace):
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=10,
                                teacher={"max_requests": 4, "concurrency": 1})
        run_id, _ = run_generate(path, workspace)
        stage = workspace.latest_stage("generate", run_id=run_id)
        kept = workspace.store.path(workspace.shards(stage, "generated")[0])
        folder = kept.parent
        tmp = folder / ".tmp-generated-dead.arrow"  # killed mid-write
        orphan = folder / "generated-dead.arrow"  # renamed, killed before its catalog row
        other = workspace.store.root / run_id / "00001-ingest" / ".tmp-corpus-x.arrow"
        for f in (tmp, orphan, other):
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"half a shard")
        _, again = run_generate(path, workspace, run_id)
    assert not tmp.exists() and not orphan.exists()
    assert kept.exists() and again.resumed_requests == 4
    assert other.exists()  # another stage's folder is that stage's to sweep


# -- 10. Retry-After: nan ------------------------------------------------------------------------
@pytest.mark.timeout(120)  # the old code slept on nan: forever
def test_a_nan_retry_after_is_ignored_not_slept_on(tmp_path, workspace):
    faults = Faults(rate_limit=0.3, retry_after=float("nan"), seed=1)
    with FakeOpenAI(faults=faults) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=12)
        started = time.monotonic()
        _, s = run_generate(path, workspace)
    assert s.complete and srv.statuses[429] > 0
    assert time.monotonic() - started < 15


# -- 9. a rejected key on the Batch API path names the URL too ----------------------------------
def test_the_batch_api_names_the_url_that_rejected_the_key(tmp_path, workspace):
    with FakeOpenAI(reject_auth=True) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=3, teacher={"batch_api": True})
        with pytest.raises(TeacherUnreachable, match=rf"{srv.base_url}/files answered http 401 "
                                                     r"\(the API key was rejected\)"):
            run_generate(path, workspace)
