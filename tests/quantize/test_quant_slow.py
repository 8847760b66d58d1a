"""Slow: the real SmolLM2-135M base student exported by our exporter, quantized by llama.cpp and
served by `stairs serve` answers over HTTP on loopback; Ctrl-C/SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from storage.tables import Model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_q8(tmp_path_factory):
    from flows.models import base_hf_folder
    from flows.models import load_folder as load_student
    from flows.quantize.gguf_export import export_gguf, llama_quantize

    out = tmp_path_factory.mktemp("real")
    model, tok = load_student(base_hf_folder())
    f16 = export_gguf(model, tok, out / "smollm2-F16.gguf")
    return llama_quantize(f16, out / "smollm2-Q8_0.gguf", "Q8_0")


def test_stairs_serve_answers_a_prompt(workspace, stairs_home, real_q8):
    from flows.serve import free_port

    m = workspace.catalog.add_model(Model(name="smollm2-Q8_0", kind="quantized", format="gguf",
                                          quant="Q8_0", path=str(real_q8)))
    port = free_port()
    env = {**os.environ, "STAIRS_HOME": str(stairs_home), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", f"catalog:{m.id}",
                             "--port", str(port), "--threads", "1"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.5)
        r = httpx.post(f"{base}/chat/completions", timeout=120, json={
            # A question the 135M model gets right in every format we tried (the embedded Q4_1
            # and our Q8_0 both miss "capital of France"; this one they all answer "2 + 3 = 5").
            "messages": [{"role": "user", "content": "What is 2 plus 3?"}],
            "max_tokens": 24, "temperature": 0})
        assert r.status_code == 200
        reply = r.json()["choices"][0]["message"]["content"]
        assert "5" in reply, reply
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "stopped" in output
    with pytest.raises(httpx.HTTPError):  # the llama.cpp child is gone too
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
