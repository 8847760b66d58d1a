"""Every expected error of a `stairs` command is one red line naming the file, key, row, run or
URL, with an exit code; never a traceback (issue 19, finding 9). Flow commands run as
subprocesses against one Prefect server for the module (marked integration: it takes a while
to start on a busy machine)."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.helpers.gen_helpers import write_curriculum
from tests.helpers.openai_server import FakeOpenAI

ROOT = Path(__file__).resolve().parents[1]
PREFECT_LOG = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ")  # Prefect's own flow-run log lines
SERVER = ("import time; from flows.settings import configure_prefect; configure_prefect(); "
          "from prefect.server.api.server import SubprocessASGIServer; "
          "s = SubprocessASGIServer(); s.start(); print(s.api_url, flush=True); time.sleep(3600)")


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """One Prefect server for every command here (the commands use it as a user's own)."""
    home = tmp_path_factory.mktemp("prefect-home")
    env = {**os.environ, "STAIRS_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)
    proc = subprocess.Popen([sys.executable, "-c", SERVER], env=env, stdout=subprocess.PIPE,
                            text=True)
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), "the temporary Prefect server did not start"
    yield url
    proc.send_signal(signal.SIGINT)  # a Python exit: Prefect's atexit hook stops the server
    proc.wait(timeout=60)


def stairs(args, stairs_home, prefect_api, preexec_fn=None):
    env = {**os.environ, "STAIRS_HOME": str(stairs_home), "PYTHONPATH": str(ROOT),
           "PREFECT_API_URL": prefect_api}
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          preexec_fn=preexec_fn)


def red_line(out) -> str:
    """The command's own stderr, which must be exactly one line and no traceback."""
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    own = [line for line in out.stderr.splitlines() if line.strip()
           and not PREFECT_LOG.match(line)]
    assert len(own) == 1, out.stderr[-3000:]
    return own[0]


def test_a_curriculum_that_is_not_utf8(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_bytes("name: caf\xe9\ncorpus: {format: demo}\n".encode("latin-1"))
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"invalid curriculum: {bad}: not UTF-8 text (byte 9 is "
                                     "0xe9); save the file as UTF-8")


@pytest.mark.parametrize("url", ["not a url", "ftp://models.example.com/v1"])
def test_a_base_url_that_is_not_an_http_endpoint(tmp_path, url):
    path = write_curriculum(tmp_path, url, rows=3)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"teacher.base_url: Value error, '{url}' not an http(s) URL" in result.stderr


@pytest.mark.integration
def test_an_unknown_run(tmp_path, stairs_home, prefect_api):
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=3)
        out = stairs(["generate", path, "--run", "20240101-000000-abcdef"], stairs_home,
                     prefect_api)
    assert out.returncode == 2
    assert red_line(out).startswith("unknown run: no run '20240101-000000-abcdef' in the "
                                    "catalog sqlite:///")


def corpus_with(tmp_path, base_url, expr, ns):
    """A curriculum whose template computes `expr` from each row's `n`: fine on the first row
    (what `stairs validate` renders), not on a later one."""
    rows = [{"passage": f"Vorla has {i} kites.", "question": "How many kites?", "answer": str(i),
             "n": n} for i, n in enumerate(ns, start=1)]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "t.yaml").write_text(yaml.safe_dump({
        "description": "fails on some rows", "needs": ["passage", "question", "meta"],
        "output": "rationale", "messages": [{"role": "user", "content": expr}]}))
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": "some-rows", "corpus": {"path": "corpus.jsonl", "eval_fraction": 0.0},
        "teacher": {"backend": "openai", "model": "fake", "base_url": base_url},
        "generate": {"template": "t", "prompts_dir": "prompts"}}))
    return path, rows


@pytest.mark.integration
@pytest.mark.parametrize("expr,ns,why", [
    ("{{ passage }} {{ 10 // meta.n }}", [1, 2, 0, 3], "ZeroDivisionError"),
    # Used to be a MemoryError (or the kernel's OOM killer) from a 10 GB prompt.
    ("{{ passage * meta.n }}", [1, 2, 10**10, 3], "over 1,000,000"),
])
def test_a_template_that_fails_on_some_rows_only(tmp_path, stairs_home, prefect_api, expr, ns,
                                                 why):
    with FakeOpenAI() as srv:
        path, rows = corpus_with(tmp_path, srv.base_url, expr, ns)
        assert CliRunner().invoke(app, ["validate", str(path)]).exit_code == 0
        out = stairs(["generate", path], stairs_home, prefect_api)
        assert sum(srv.received.values()) == 0  # every row renders before anything is sent
    assert out.returncode == 2
    line = red_line(out)
    from flows.ingest.rows import content_id

    bad = content_id(rows[2]["passage"], rows[2]["question"], rows[2]["answer"])
    assert line.startswith(f"template error: {tmp_path / 'prompts' / 't.yaml'}: row {bad}: "
                           "messages[0] (user): ")
    assert why in line


@pytest.mark.integration
@pytest.mark.parametrize("status,why", [(401, "the API key was rejected"),
                                        (403, "access is forbidden"),
                                        (404, "no such model or route")])
def test_a_rejecting_endpoint_is_named(tmp_path, stairs_home, prefect_api, status, why):
    with FakeOpenAI(reject_auth=True, reject_status=status) as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=3)
        out = stairs(["generate", path], stairs_home, prefect_api)
    assert out.returncode == 3
    assert red_line(out).startswith(
        f"teacher unreachable: {srv.base_url}/chat/completions answered http {status} ({why})")


@pytest.mark.integration
def test_a_full_disk_is_one_line_and_the_run_ends_failed(tmp_path, stairs_home, prefect_api,
                                                        workspace):
    workspace.catalog.engine.dispose()
    limit = (stairs_home / "catalog.db").stat().st_size + 64 * 1024

    def full_disk():  # no file of this process may grow past `limit` bytes: ENOSPC's cousin
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=200, generate={"batch_rows": 50})
        out = stairs(["generate", path], stairs_home, prefect_api, preexec_fn=full_disk)
    assert out.returncode == 1
    assert re.match(r"(catalog error: .*(disk|full).*|cannot read or write: .*File too large.*)",
                    red_line(out)), red_line(out)
    runs = json.loads(stairs(["runs", "--json"], stairs_home, prefect_api).stdout)
    assert [r["status"] for r in runs] == ["failed"]  # recorded, or marked by this command
