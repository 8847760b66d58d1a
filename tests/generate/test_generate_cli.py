"""`stairs generate` end to end: the CLI, a Prefect flow run (temporary server), the progress
artifact, and `--json`. Marked integration (a Prefect server costs ~15-30 s here)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.gen_helpers import write_curriculum
from tests.helpers.openai_server import FakeOpenAI

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_stairs_generate_runs_as_a_flow_with_a_progress_artifact(tmp_path, stairs_home):
    with FakeOpenAI() as srv:
        path = write_curriculum(tmp_path, srv.base_url, rows=15)
        env = {**os.environ, "STAIRS_HOME": str(stairs_home), "PYTHONPATH": str(ROOT)}
        env.pop("PREFECT_API_URL", None)
        env.pop("PREFECT_HOME", None)
        out = subprocess.run([sys.executable, "-m", "flows.cli", "generate", str(path), "--json"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)
    assert result["complete"] and result["rows_written"] == result["requests"] > 0
    db = sqlite3.connect(stairs_home / "prefect" / "prefect.db")
    rows = db.execute("select type, data from artifact where key = 'generate-rationale-progress'").fetchall()
    assert rows and rows[-1][0] == "progress" and float(rows[-1][1]) == 100.0
