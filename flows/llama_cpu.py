"""llama.cpp on CPUs with Intel AMX.

llama.cpp's AMX matrix kernels (ggml's `ggml_backend_amx_mul_mat`) segfault in the first
matrix product on some Sapphire-Rapids-class machines: ggml-org/llama.cpp#20824, closed as stale
without a fix; dspy's CI dropped AMX for the same crash. Seen here on 2026-12-03
(llama-cpp-python 0.3.36 built on the machine, a 2-core VM whose CPU reports amx_int8): every
model, the embedded SmolLM2 Q4_1 and Qwen2.5-Coder Q4_K_M alike, killed the process on its first
llama_decode, with or without stairs' own decoding loop.

Weights reach the AMX kernels only through llama.cpp's "extra buffer types" (weight
repacking), which a model's `use_extra_bufts` parameter turns off, and llama-cpp-python's
`Llama` has no argument for it. So where the CPU reports AMX, guard() makes llama-cpp-python's
default model parameters carry use_extra_bufts=False: the plain CPU kernels, no repacking.
Every other CPU is left exactly as it was. STAIRS_LLAMA_AMX=1 keeps the AMX kernels (for a
machine where they work); STAIRS_LLAMA_AMX=0 turns extra buffer types off on any CPU.

open_llama() loads a GGUF file in process after the guard. The teacher's server is another
process: `python -m flows.llama_cpu llama_cpp.server ...` runs it with the same guard.
"""

from __future__ import annotations

import functools
import os
import runpy
import sys
from pathlib import Path

AMX_FLAGS = ("amx_int8", "amx_bf16", "amx_tile")


@functools.cache
def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU reports an AMX feature (Linux; ggml's AMX kernels are x86 only)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return any(flag in line.split() for flag in AMX_FLAGS)
    return False


def keep_extra_buffers() -> bool:
    choice = os.environ.get("STAIRS_LLAMA_AMX")
    if choice in ("0", "1"):
        return choice == "1"
    return not cpu_has_amx()


def guard() -> None:
    """Call before loading a model with llama-cpp-python; does nothing on a CPU without AMX,
    and nothing the second time."""
    if keep_extra_buffers():
        return
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    plain = bindings.llama_model_default_params
    if hasattr(plain, "stairs_plain"):
        return

    def without_extra_buffers():
        params = plain()
        params.use_extra_bufts = False
        return params

    without_extra_buffers.stairs_plain = plain  # llama-cpp-python's own
    # Llama.__init__ reads it from the bindings module; `llama_cpp.<name>` is another binding
    # of the same function.
    bindings.llama_model_default_params = without_extra_buffers
    llama_cpp.llama_model_default_params = without_extra_buffers


def open_llama(path, **kwargs):
    """llama-cpp-python's `Llama(path, **kwargs)`, loaded after guard(): how stairs opens a
    GGUF file in process."""
    guard()
    from llama_cpp import Llama

    return Llama(str(path), **kwargs)


def server_command(*args: str) -> list[str]:
    """llama-cpp-python's OpenAI-compatible server, guarded, as a child process's argv."""
    return [sys.executable, "-m", "flows.llama_cpu", "llama_cpp.server", *args]


if __name__ == "__main__":
    # python -m flows.llama_cpu MODULE ARGS...: run MODULE as `python -m MODULE ARGS...` would,
    # with the guard in place.
    guard()
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
