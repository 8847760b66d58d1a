"""The judge pass through the stage flows: a writer teacher answers the demo questions, a
different judge teacher grades every row (prompts/judge.yaml), curation drops the low-scored
rows as judge_low with their reason kept, and the student trains on the rest; against two
loopback fake OpenAI servers and the tiny test model."""

from __future__ import annotations

import pytest
import yaml

from flows import spec as spec_mod
from flows.curate import curate
from flows.generate import generate
from flows.train import train
from tests.helpers.openai_server import FakeOpenAI
from tests.helpers.tiny_student import save_tiny_base, tiny_tokenizer


def low(user: str) -> bool:
    """The fake judge's verdict: a low score for answers that are even numbers."""
    answer = user.rsplit("Answer:", 1)[1].strip()
    return answer.isdigit() and int(answer) % 2 == 0


def judge(messages):
    assert messages[0]["content"].startswith("You grade solutions"), "only judge requests"
    user = messages[-1]["content"]
    return ("Reason: the sum is not supported.\nScore: 2" if low(user)
            else "Reason: every step follows from the text.\nScore: 5")


@pytest.fixture
def tiny_base(tmp_path):
    tok = tiny_tokenizer()
    return save_tiny_base(tmp_path / "tiny-base", tok)


def curriculum(tmp_path, writer_url, judge_url, base):
    doc = yaml.safe_load(open("curricula/judge.yaml"))
    doc["corpus"]["demo"]["rows"] = 24
    doc["corpus"]["eval_fraction"] = 0.2
    doc["teacher"] = {"backend": "openai", "model": "fake", "base_url": writer_url,
                      "temperature": 0.0}
    doc["generate"]["judge"]["teacher"] = {"backend": "openai", "model": "fake-judge",
                                           "base_url": judge_url, "temperature": 0.0}
    doc["student"].update({"base": str(base), "max_steps": 2, "batch_size": 2, "eval_rows": 2,
                           "eval_max_new_tokens": 4})
    path = tmp_path / "judge.yaml"
    path.write_text(yaml.safe_dump(doc))
    return spec_mod.load(path)


def test_judge_scores_rows_and_low_ones_never_reach_the_student(tmp_path, workspace, tiny_base):
    with FakeOpenAI() as writer, FakeOpenAI(responder=judge) as judge_srv:
        spec = curriculum(tmp_path, writer.base_url, judge_srv.base_url, tiny_base)
        run_id = workspace.start_run(spec, "run").id
        gen = generate(spec, workspace, run_id, progress_bar=False)
        n = gen.rows_written
        assert gen.complete and gen.judge_rows == n and gen.judge_answered == n
        # The judge is its own teacher: the writer never saw a judge request.
        assert sum(judge_srv.received.values()) == n and sum(writer.received.values()) == n
        # Rerun: identical finished work is reused, nothing is sent to either teacher.
        again = generate(spec, workspace, run_id, progress_bar=False)
        assert again.reused_stage is not None
        assert sum(judge_srv.received.values()) == n and sum(writer.received.values()) == n

    cur = curate(spec, workspace, run_id)
    stage = workspace.latest_stage("curate", run_id=run_id)
    kept = workspace.store.scan(workspace.shards(stage, "kept")).collect()
    dropped = workspace.store.scan(workspace.shards(stage, "dropped")).collect()
    assert cur.judged == n and cur.judge_low == cur.drops_by_reason["judge_low"] > 0
    low_rows = dropped.filter(dropped["drop_reason"] == "judge_low")
    assert set(low_rows["judge_score"].to_list()) == {2.0}
    assert set(low_rows["judge_reason"].to_list()) == {"the sum is not supported."}
    assert all(int(a) % 2 == 0 for a in low_rows["answer"].to_list())
    assert set(kept["judge_score"].to_list()) == {5.0}
    assert cur.kept == n - cur.judge_low and 0 < cur.mean_judge_score < 5

    result = train(spec, workspace, run_id)
    assert result.rows == cur.kept and result.steps == 2


def test_judge_requests_left_unanswered_are_resumed_not_repaid(tmp_path, workspace, tiny_base):
    """A judge request that outlives its retries leaves the stage incomplete; the next run
    adopts every row already written (generated and judged) and sends only that request."""
    with FakeOpenAI() as writer:
        with FakeOpenAI(responder=judge, drop=("Answer: 11",)) as flaky:
            spec = curriculum(tmp_path, writer.base_url, flaky.base_url, tiny_base)
            spec = spec_mod.with_changes(spec, {"generate.judge.teacher.max_retries": 0,
                                                "generate.judge.teacher.concurrency": 1})
            run_id = workspace.start_run(spec, "run").id
            first = generate(spec, workspace, run_id, progress_bar=False)
        failed = first.judge_unanswered
        assert failed > 0 and not first.complete and first.judge_complete is False
        sent_to_writer = sum(writer.received.values())
        with FakeOpenAI(responder=judge, port=flaky.port) as healthy:
            second = generate(spec, workspace, run_id, progress_bar=False)
            assert second.complete and second.resumed_requests == second.requests
            assert second.judge_resumed_requests == second.judge_requests - failed
            assert sum(healthy.received.values()) == failed
        assert sum(writer.received.values()) == sent_to_writer
    cur = curate(spec, workspace, run_id)
    assert cur.judged == second.judge_rows
