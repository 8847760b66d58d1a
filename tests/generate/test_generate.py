"""The generate stage against a real HTTP server on loopback (tests/helpers/openai_server.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flows import spec as spec_mod
from flows.generate import generate, generate_flow
from flows.params import StageParams
from flows.preflight import load_checked
from flows.teachers import TeacherUnreachable
from tests.helpers.gen_helpers import generated, write_curriculum
from tests.helpers.openai_server import FakeOpenAI, Faults

ROOT = Path(__file__).resolve().parents[2]


def run_generate(path: Path, ws, **kw):
    spec = spec_mod.load(path)
    run_id = ws.start_run(spec, "generate").id
    return run_id, generate(spec, ws, run_id, progress_bar=False, **kw)


@pytest.mark.parametrize("client", ["fast", "openai"])
def test_every_row_arrives_exactly_once_under_faults(tmp_path, workspace, client):
    faults = Faults(rate_limit=0.12, retry_after=0.05, server_error=0.08, disconnect=0.06,
                    malformed=0.06, slow=0.04, slow_s=0.8, seed=3)
    with FakeOpenAI(latency=0.005, faults=faults) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=60,
                                teacher={"timeout": 0.3, "concurrency": 8, "samples": 2,
                                         "client": client})
        run_id, summary = run_generate(path, workspace)
    df = generated(workspace, run_id)
    assert summary.complete and summary.unanswered == 0
    assert df.height == summary.requests == 2 * summary.source_rows
    assert df["id"].n_unique() == df.height
    assert df.select(["source_id", "sample_index"]).n_unique() == df.height
    # Every fault kind really happened and was survived.
    for status in (429, 500, "disconnect", "malformed", "slow"):
        assert srv.statuses[status] > 0, status
    assert summary.retries > 0
    # The solver's answers arrived parsed; the gold answer is kept beside them.
    assert (df["answer"] == df["gold_answer"]).all()
    assert df["error"].null_count() == df.height


def test_rerun_sends_nothing_and_one_row_edit_sends_one(tmp_path, workspace):
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=20)
        run1, first = run_generate(path, workspace)
        sent = sum(srv.received.values())
        assert first.cache_misses == sent == first.requests

        run2, again = run_generate(path, workspace)
        assert sum(srv.received.values()) == sent  # identical work: zero requests
        assert generated(workspace, run2).height == first.rows_written

        lines = (tmp_path / "corpus.jsonl").read_text().splitlines()
        row = json.loads(lines[3])
        row["passage"] = row["passage"].replace(".", " today.", 1)
        lines[3] = json.dumps(row)
        (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n")
        run3, edited = run_generate(path, workspace)
    assert sum(srv.received.values()) == sent + 1
    assert edited.cache_misses == 1 and edited.cache_hits == first.requests - 1
    assert generated(workspace, run3).height == first.rows_written


def test_budget_stops_cleanly_and_resume_finishes(tmp_path, workspace):
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=20,
                                teacher={"max_requests": 5, "concurrency": 2})
        spec = spec_mod.load(path)
        run_id = workspace.start_run(spec, "generate").id
        s1 = generate(spec, workspace, run_id, progress_bar=False)
        assert s1.budget_exhausted and not s1.complete
        assert s1.sent == 5 == sum(srv.received.values()) == s1.rows_written
        # Same run again: the 5 are adopted, the budget allows 5 more, and so on to the end.
        while not s1.complete:
            s1 = generate(spec, workspace, run_id, progress_bar=False)
    df = generated(workspace, run_id)
    assert df.height == s1.requests and df["id"].n_unique() == df.height
    assert max(srv.received.values()) == 1  # nothing was ever sent twice


def test_token_budget_and_cost(tmp_path, workspace):
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=20, teacher={
            "max_total_tokens": 300, "concurrency": 1,
            "cost": {"prompt_per_million": 1.0, "completion_per_million": 2.0}})
        run_id, s = run_generate(path, workspace)
    total = s.prompt_tokens + s.completion_tokens
    assert s.budget_exhausted and total >= 300
    assert s.cost_usd == pytest.approx((s.prompt_tokens + 2 * s.completion_tokens) / 1e6)
    df = generated(workspace, run_id)
    assert df["prompt_tokens"].sum() == s.prompt_tokens
    # With one request at a time it stops right after crossing the budget: without its last
    # answer the run would still have been under it, and most of the 20 rows were never sent.
    per_row = (df["prompt_tokens"] + df["completion_tokens"]).to_list()
    assert total - max(per_row) < 300 and len(per_row) < 20


@pytest.mark.parametrize("client", ["fast", "openai"])
def test_unreachable_teacher_fails_fast_with_a_clear_message(tmp_path, workspace, client):
    from tests.helpers.openai_server import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    path = write_curriculum(tmp_path, url, rows=5, teacher={"client": client})
    started = time.monotonic()
    with pytest.raises(TeacherUnreachable, match="cannot reach http://127.0.0.1"):
        run_generate(path, workspace)
    assert time.monotonic() - started < 10


def test_teacher_dying_midway_keeps_finished_rows(tmp_path, workspace):
    srv = FakeOpenAI(latency=0.02).start()
    path = write_curriculum(tmp_path, srv.base_url, rows=40,
                            teacher={"max_retries": 2, "concurrency": 2},
                            generate={"batch_rows": 4})
    spec = spec_mod.load(path)
    run_id = workspace.start_run(spec, "generate").id

    import threading

    def kill_when_busy():
        while sum(srv.answered.values()) < 10:
            time.sleep(0.005)
        srv.stop()

    threading.Thread(target=kill_when_busy, daemon=True).start()
    with pytest.raises(TeacherUnreachable, match="stopped answering"):
        generate(spec, workspace, run_id, progress_bar=False)
    stage = [s for s in workspace.catalog.stages(run_id) if s.name == "generate"][-1]
    assert stage.status == "failed"
    kept = workspace.store.scan(workspace.shards(stage, "generated")).collect()
    assert kept.height >= 10 and kept["id"].n_unique() == kept.height
    answered_before = sum(srv.answered.values())

    with FakeOpenAI(port=srv.port) as again:  # the teacher comes back on the same address
        s = generate(spec, workspace, run_id, progress_bar=False)
    assert s.complete
    df = generated(workspace, run_id)
    assert df.height == s.requests and df["id"].n_unique() == df.height
    # Only what was never answered (or in flight when it died) is asked again.
    assert sum(again.answered.values()) <= s.requests - answered_before + 2


def test_bad_teacher_output_becomes_rows_with_named_errors(tmp_path, workspace):
    from flows.ingest import demo

    rows = list(demo.generate(4, seed=0, people=2, colors=2, max_count=9, tasks=["sum"]))
    script = {rows[0]["passage"]: ("I'm sorry, but I can't help with that.", "stop"),
              rows[1]["passage"]: ("", "stop"),
              rows[2]["passage"]: ("Let me add these numbers one by one: first", "length"),
              rows[3]["passage"]: ("The numbers are small.", "stop")}
    with FakeOpenAI(script=script) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=4)
        run_id, s = run_generate(path, workspace)
    df = generated(workspace, run_id)
    errors = dict(zip(df["passage"].to_list(), df["error"].to_list()))
    assert errors[rows[0]["passage"]] == "refused"
    assert errors[rows[1]["passage"]] == "empty"
    assert errors[rows[2]["passage"]] == "truncated"
    assert errors[rows[3]["passage"]] == "no_answer"
    assert s.complete and sum(s.errors_by_reason.values()) == 4


def test_api_key_is_used_but_never_stored(tmp_path, workspace, monkeypatch, stairs_home):
    secret = "sk-test-" + "9f3a7c" * 6
    monkeypatch.setenv("STAIRS_FAKE_KEY", secret)
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=6,
                                teacher={"api_key_env": "STAIRS_FAKE_KEY", "top_logprobs": 2})
        run_id, s = run_generate(path, workspace)
    assert srv.auth_headers and set(srv.auth_headers) == {f"Bearer {secret}"}
    workspace.catalog.engine.dispose()  # flush the WAL into the db file before grepping
    leaked = [p for p in Path(stairs_home).rglob("*") if p.is_file()
              and secret.encode() in p.read_bytes()]
    assert leaked == []
    df = generated(workspace, run_id)
    assert df["logprobs"].null_count() == 0  # top-k logprobs kept with the row
    assert json.loads(df["logprobs"][0])[0]["top"]


def test_missing_api_key_variable_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("STAIRS_NO_SUCH_KEY", raising=False)
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=3,
                                teacher={"api_key_env": "STAIRS_NO_SUCH_KEY"})
        with pytest.raises(spec_mod.SpecError, match="STAIRS_NO_SUCH_KEY is not set"):
            load_checked(path)


# batch_rows 1000: no shard is written before the kill, so every answer the resume does not pay
# for again comes back from the killed batch's answer journal (flows/teachers/journal.py).
# rows_in: "loop" builds rows in the request loop; "process" in a row process
# (flows/generate/rowproc.py), which the kill leaves to journal what it was handed and exit.
@pytest.mark.parametrize("rows_in", ["loop", "process"])
@pytest.mark.parametrize("batch_rows", [7, 1000])
def test_kill_9_midway_then_resume_loses_and_duplicates_nothing(tmp_path, workspace,
                                                                  stairs_home, batch_rows,
                                                                  rows_in):
    with FakeOpenAI(latency=0.03) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=80,
                                teacher={"concurrency": 4}, generate={"batch_rows": batch_rows})
        code = ("import sys; from flows.generate import generate_flow; "
                "from flows.params import StageParams; "
                "generate_flow.fn(StageParams(curriculum=sys.argv[1]))")
        env = {**os.environ, "STAIRS_HOME": str(stairs_home), "PYTHONPATH": str(ROOT),
               "STAIRS_ROW_PROCESS_MIN": "1" if rows_in == "process" else "0"}
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while sum(srv.answered.values()) < 30:
            assert proc.poll() is None, "generate ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.002)
        children = psutil.Process(proc.pid).children()
        assert len(children) == (1 if rows_in == "process" else 0)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        gone, alive = psutil.wait_procs(children, timeout=15)  # it exits on its own
        assert not alive
        received_at_kill = sum(srv.received.values())
        journals = list((stairs_home / "catalog.db.answers").glob("*.jsonl"))
        assert len(journals) == 1  # the killed batch's, left for the next lookup to fold

        result = generate_flow.fn(StageParams(curriculum=str(path)))  # resumes the killed run
    assert not journals[0].exists()
    run_id = result.run_id
    assert result.complete
    df = generated(workspace, run_id)
    assert df.height == result.requests == result.source_rows
    assert df["id"].n_unique() == df.height
    resent = sum(n - 1 for n in srv.received.values() if n > 1)
    assert resent <= 4  # at most the requests in flight at the kill
    assert sum(srv.received.values()) == result.requests + resent
    assert received_at_kill >= 30
    assert result.resumed_requests + result.cache_hits >= 30 - 4
    if batch_rows == 1000:  # nothing to adopt: all of it came from the journal
        assert result.resumed_requests == 0 and result.cache_hits >= 30 - 4


@pytest.mark.parametrize("rows_in", ["loop", "process"])
def test_ctrl_c_keeps_everything_answered(tmp_path, workspace, stairs_home, rows_in):
    with FakeOpenAI(latency=0.03) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=80,
                                teacher={"concurrency": 4}, generate={"batch_rows": 1000})
        code = ("import sys; from flows.generate import generate_flow; "
                "from flows.params import StageParams; "
                "generate_flow.fn(StageParams(curriculum=sys.argv[1]))")
        env = {**os.environ, "STAIRS_HOME": str(stairs_home), "PYTHONPATH": str(ROOT),
               "STAIRS_ROW_PROCESS_MIN": "1" if rows_in == "process" else "0"}
        # With a row process, Ctrl-C as a terminal sends it: to the whole process group.
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, cwd=ROOT,
                                stderr=subprocess.PIPE, start_new_session=rows_in == "process")
        deadline = time.monotonic() + 60
        while sum(srv.answered.values()) < 20:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.002)
        if rows_in == "process":
            assert len(psutil.Process(proc.pid).children()) == 1
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert b"KeyboardInterrupt" in stderr
        run = workspace.catalog.runs()[0]
        assert run.status == "stopped"
        stage = [s for s in workspace.catalog.stages(run.id) if s.name == "generate"][-1]
        assert stage.status == "stopped"
        # batch_rows is 1000: these rows were flushed by the interrupt, not by a full batch.
        kept = workspace.store.scan(workspace.shards(stage, "generated")).collect()
        assert kept.height >= 20 - 4

        result = generate_flow.fn(StageParams(curriculum=str(path)))
    assert result.run_id == run.id and result.complete
    assert result.resumed_requests == kept.height
    resent = sum(n - 1 for n in srv.received.values() if n > 1)
    assert resent <= 4
    assert generated(workspace, run.id)["id"].n_unique() == result.requests


def test_batch_api_path_answers_everything_once(tmp_path, workspace):
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=12,
                                teacher={"batch_api": True, "samples": 2})
        run_id, s = run_generate(path, workspace)
        assert s.complete and s.rows_written == s.requests == 2 * s.source_rows
        assert len(srv.batches) == 1 and max(srv.received.values()) == 1
        df = generated(workspace, run_id)
        assert (df["answer"] == df["gold_answer"]).all()
        # Unchanged rerun: everything from the cache, no new batch.
        run_generate(path, workspace)
        assert len(srv.batches) == 1


def test_a_later_round_with_another_teacher_is_its_own_stage(tmp_path, workspace):
    with FakeOpenAI() as first, FakeOpenAI() as second:
        path = write_curriculum(tmp_path, first.base_url, rows=6)
        spec = spec_mod.load(path)
        run_id = workspace.start_run(spec, "generate").id
        generate(spec, workspace, run_id, progress_bar=False)
        student = spec.teacher.model_copy(update={"base_url": second.base_url,
                                                  "model": "student"})
        s1 = generate(spec, workspace, run_id, round_index=1, teacher=student,
                      progress_bar=False)
    assert s1.teacher == "openai:student" and s1.cache_misses == s1.requests
    assert sum(second.received.values()) == s1.requests
    df = generated(workspace, run_id, round_index=1)
    assert df["round"].unique().to_list() == [1]
    assert generated(workspace, run_id, round_index=0).height == df.height


def test_catalog_model_reference_resolves_to_its_file(workspace, stairs_home):
    from flows.models import ModelRefError, resolve_model
    from storage.tables import Model

    gguf = stairs_home / "models" / "student-q4.gguf"
    gguf.parent.mkdir(parents=True, exist_ok=True)
    gguf.write_bytes(b"GGUF" + bytes(16))
    model = workspace.catalog.add(Model(name="s", kind="quantized", format="gguf",
                                        path="student-q4.gguf"))
    assert resolve_model(f"catalog:{model.id}") == gguf
    with pytest.raises(ModelRefError, match="no model 999"):
        resolve_model("catalog:999")
    with pytest.raises(ModelRefError, match=r"not a model name \(smollm2-135m, "):
        resolve_model("no/such/file.gguf")


def test_a_rejected_key_stops_the_run_instead_of_writing_error_rows(tmp_path, workspace):
    with FakeOpenAI(reject_auth=True) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=5)
        with pytest.raises(TeacherUnreachable, match="http 401"):
            run_generate(path, workspace)


def test_batch_killed_while_waiting_is_picked_up_not_paid_twice(tmp_path, workspace,
                                                                 stairs_home):
    with FakeOpenAI(hold_batches=True) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=10, teacher={"batch_api": True})
        code = ("import sys; from flows.generate import generate_flow; "
                "from flows.params import StageParams; "
                "generate_flow.fn(StageParams(curriculum=sys.argv[1]))")
        env = {**os.environ, "STAIRS_HOME": str(stairs_home), "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-c", code, str(path)], env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while not srv.batches or next(iter(srv.batches.values()))["polls"] < 2:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        srv.hold_batches = False
        result = generate_flow.fn(StageParams(curriculum=str(path)))
    assert result.complete and result.rows_written == result.requests
    assert len(srv.batches) == 1  # the submitted batch was found again, not resubmitted
    assert max(srv.received.values()) == 1


def test_structured_output_sends_the_templates_json_schema(tmp_path, workspace):
    from flows.prompting import load_template

    schema = load_template("disentangle").json_schema
    reply = json.dumps({"facts": ["Ana has 2 red kites."], "questions": [
        {"question": "How many kites does Ana have?", "rationale": "Ana has 2.", "answer": "2"}]})
    with FakeOpenAI(script={"": (reply, "stop")}) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=3,
                                teacher={"structured_output": True},
                                generate={"template": "disentangle"})
        run_id, s = run_generate(path, workspace)
    assert srv.formats and all(f == {"type": "json_schema", "json_schema": {
        "name": "row", "schema": schema}} for f in srv.formats)
    df = generated(workspace, run_id)
    assert s.complete and df["question"].to_list() == ["How many kites does Ana have?"] * 3
    assert df["gold_answer"].null_count() == 3  # the teacher's own question has no gold answer
