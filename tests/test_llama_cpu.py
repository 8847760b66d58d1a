"""flows/llama_cpu.py: on a CPU with AMX, llama.cpp models load without extra buffer types (its
AMX kernels segfault on some of them), in this process and in the teacher's server process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows import llama_cpu

ROOT = Path(__file__).resolve().parents[1]

SPR_FLAGS = ("flags\t\t: fpu vme avx2 avx512f avx512_bf16 amx_bf16 avx512_fp16 amx_tile "
             "amx_int8\n")
ZEN_FLAGS = "flags\t\t: fpu vme avx2 avx512f avx512_bf16 avx512_vnni\n"


def test_amx_is_read_from_the_cpu_flags(tmp_path):
    for i, (text, expected) in enumerate([(SPR_FLAGS, True), (ZEN_FLAGS, False),
                                          ("processor: 0\n", False)]):
        info = tmp_path / f"cpuinfo-{i}"
        info.write_text("processor\t: 0\n" + text)
        assert llama_cpu.cpu_has_amx(info) is expected
    assert llama_cpu.cpu_has_amx(tmp_path / "missing") is False


@pytest.fixture
def restored_defaults():
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    saved = bindings.llama_model_default_params, llama_cpp.llama_model_default_params
    # Unguarded for the test, even where an earlier test guarded this process (a CPU with AMX).
    plain = getattr(saved[0], "stairs_plain", saved[0])
    bindings.llama_model_default_params = llama_cpp.llama_model_default_params = plain
    yield bindings
    bindings.llama_model_default_params, llama_cpp.llama_model_default_params = saved


@pytest.mark.parametrize("choice, amx, extra_buffers", [
    (None, True, False), (None, False, True), ("1", True, True), ("0", False, False)])
def test_guard_turns_extra_buffers_off_only_where_asked(monkeypatch, restored_defaults, choice,
                                                        amx, extra_buffers):
    import llama_cpp

    if choice is None:
        monkeypatch.delenv("STAIRS_LLAMA_AMX", raising=False)
    else:
        monkeypatch.setenv("STAIRS_LLAMA_AMX", choice)
    monkeypatch.setattr(llama_cpu, "cpu_has_amx", lambda: amx)
    llama_cpu.guard()
    llama_cpu.guard()  # twice: still one wrapper
    for params in (restored_defaults.llama_model_default_params(),
                   llama_cpp.llama_model_default_params()):
        assert params.use_extra_bufts is extra_buffers
    # What a Llama is built from: everything else stays llama.cpp's default.
    assert restored_defaults.llama_model_default_params().vocab_only is False


def test_the_server_command_runs_its_module_guarded(tmp_path):
    """The teacher's llama.cpp server is `python -m flows.llama_cpu llama_cpp.server ...`: the
    named module runs as __main__ with its own arguments, after the guard."""
    (tmp_path / "probe_main.py").write_text(
        "import sys\n"
        "import llama_cpp.llama_cpp as b\n"
        "if __name__ == '__main__':\n"
        "    print(sys.argv[1:], b.llama_model_default_params().use_extra_bufts)\n")
    cmd = llama_cpu.server_command("--model", "x.gguf")
    assert cmd[1:4] == ["-m", "flows.llama_cpu", "llama_cpp.server"]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}", "STAIRS_LLAMA_AMX": "0"}
    out = subprocess.run([sys.executable, "-m", "flows.llama_cpu", "probe_main", "--port", "1"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['--port', '1'] False"


@pytest.mark.slow
def test_a_guarded_model_decodes(monkeypatch, restored_defaults):
    """The embedded teacher loaded through the evaluation engine with extra buffer types off
    (what a CPU with AMX gets) answers."""
    from flows.embedded import embedded_gguf
    from flows.evaluate.engines import GGUFEngine

    monkeypatch.setenv("STAIRS_LLAMA_AMX", "0")
    engine = GGUFEngine(embedded_gguf(), threads=1, width=2)
    try:
        assert engine.llm.model_params.use_extra_bufts is False
        texts, tokens = engine.generate([[{"role": "user", "content": "Say hello."}]] * 2, 8)
    finally:
        engine.close()
    assert tokens > 0 and texts[0] == texts[1] and texts[0].strip()
