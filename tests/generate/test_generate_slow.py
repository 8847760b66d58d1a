"""Generate with the REAL embedded teacher: llama.cpp's server running SmolLM2-135M on loopback,
and the transformers backend on the same GGUF (logits -> top-k logprobs). Marked slow."""

from __future__ import annotations

import json

import psutil
import pytest

from flows.generate import generate
from flows.spec import Curriculum

pytestmark = pytest.mark.slow


def _spec(teacher: dict, rows: int = 5) -> Curriculum:
    return Curriculum.model_validate({
        "name": "slow-gen", "corpus": {"format": "demo", "demo": {"rows": 12, "seed": 1},
                                       "eval_fraction": 0.2},
        "teacher": {"max_tokens": 96, **teacher},
        "generate": {"max_rows": rows, "batch_rows": 2}})


def _servers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "llama_cpp.server" in " ".join(p.cmdline())]


def test_embedded_llamacpp_teacher_generates_rows(workspace):
    spec = _spec({"backend": "llamacpp", "model": "smollm2-135m", "top_logprobs": 2})
    run_id = workspace.start_run(spec, "generate").id
    summary = generate(spec, workspace, run_id, progress_bar=False)
    assert _servers() == []  # the server was stopped when the stage ended
    stage = workspace.latest_stage("generate", run_id=run_id, round_index=0)
    df = workspace.store.scan(workspace.shards(stage, "generated")).collect()
    assert summary.complete and df.height == 5 == summary.sent
    assert summary.completion_tokens > 0 and (df["completion_tokens"] > 0).all()
    assert df["teacher"].unique().to_list() == ["llamacpp:smollm2-135m"]
    assert all(r.strip() for r in df["response"].to_list())
    steps = json.loads(df["logprobs"][0])  # llama.cpp's top-k, in the one stored layout
    assert all(1 <= len(t["top"]) <= 2 and t["top"][0][1] >= t["top"][-1][1] for t in steps)
    # The second run of the same work costs nothing: the server is not even started.
    again = generate(spec, workspace, workspace.start_run(spec, "generate").id,
                     progress_bar=False)
    assert again.reused_stage == stage.id


def test_transformers_teacher_keeps_logits_as_top_k_logprobs(workspace):
    spec = _spec({"backend": "transformers", "model": "smollm2-135m", "top_logprobs": 3,
                  "max_tokens": 24}, rows=2)
    run_id = workspace.start_run(spec, "generate").id
    summary = generate(spec, workspace, run_id, progress_bar=False)
    stage = workspace.latest_stage("generate", run_id=run_id, round_index=0)
    df = workspace.store.scan(workspace.shards(stage, "generated")).collect()
    assert summary.complete and df.height == 2
    steps = json.loads(df["logprobs"][0])
    assert len(steps) == df["completion_tokens"][0]
    assert len(steps[0]["top"]) == 3 and steps[0]["top"][0][1] >= steps[0]["top"][-1][1]


def test_llamacpp_server_dies_with_a_killed_stairs_process(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    # top_logprobs: a request only the server answers (the in-process path gives text only).
    code = ("from flows.spec import TeacherSpec; from flows.teachers import make_teacher; "
            "import time; t = make_teacher(TeacherSpec(top_logprobs=1)); t.start(); "
            "print('up', flush=True); time.sleep(600)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(root),
                                 "STAIRS_HOME": str(tmp_path)})
    assert proc.stdout.readline().strip() == b"up"
    server = [p for p in psutil.Process(proc.pid).children(recursive=True)
              if "llama_cpp.server" in " ".join(p.cmdline())]
    assert len(server) == 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(server, timeout=15)
    assert not alive, "the llama.cpp server outlived a kill -9 of its parent"


@pytest.mark.parametrize("sampling", [
    {"temperature": 0.0},
    {"temperature": 0.7, "top_p": 0.95, "samples": 2, "seed": 3},  # the climb's kind of request
], ids=["greedy", "sampled"])
def test_the_embedded_teacher_answers_in_process_as_its_server_does(workspace, sampling):
    """Greedy and seeded text requests skip the server (flows/teachers/llamacpp_batched.py): the
    rows hold, token for token, what llama.cpp's server answers the same requests."""
    from flows.teachers import Request, Sampling, running
    from flows.teachers.aio import run_coroutine
    from flows.teachers.llamacpp import LlamaCppTeacher

    rows = 10 // sampling.get("samples", 1)
    spec = _spec({"backend": "llamacpp", "model": "smollm2-135m", **sampling}, rows=rows)
    run_id = workspace.start_run(spec, "generate").id
    summary = generate(spec, workspace, run_id, progress_bar=False)
    stage = workspace.latest_stage("generate", run_id=run_id, round_index=0)
    df = workspace.store.scan(workspace.shards(stage, "generated")).collect()
    from flows.embedded import embedded_gguf
    from tests.helpers.probed import probed_width

    assert summary.complete and df.height == 10
    assert summary.concurrency_min == probed_width(embedded_gguf())
    # All first samples, then all second ones: the server keeps the previous request's cache,
    # and after another sample of the same prompt it evaluates only the prompt's last token
    # again, which moves its logits and so some sampled tokens (docs/teachers.md).
    df = df.sort(["sample_index", "source_id"])
    requests = [Request(str(i), json.loads(m), Sampling(**json.loads(p)), 0)
                for i, (m, p) in enumerate(zip(df["messages"], df["sampling"]))]
    server, replies = LlamaCppTeacher(spec.teacher), {}

    async def ask():
        async for answers in server.stream(requests):
            replies.update({req.key: reply for req, reply in answers})

    with running(server):
        run_coroutine(ask())
    assert df["response"].to_list() == [replies[str(i)].text for i in range(10)]
    assert df["completion_tokens"].to_list() == [replies[str(i)].completion_tokens
                                                 for i in range(10)]
