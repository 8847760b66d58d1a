"""Pre-flight check (flows/preflight.py) for the teacher: its model file must exist and its API key
variable be set, before any request. Kept free of heavy imports (no prefect, no openai): the
CLI loads checks before it configures Prefect."""

from __future__ import annotations

import os


def check_teacher(spec) -> list[str]:
    from flows.models import ModelRefError, resolve_model

    t = spec.teacher
    problems = []
    if t.backend in ("llamacpp", "transformers"):
        try:
            resolve_model(t.model, base_dir=spec.base_dir, fetch=False)
        except (ModelRefError, FileNotFoundError) as e:
            problems.append(f"teacher.model: {e}")
    if t.api_key_env is not None and not os.environ.get(t.api_key_env):
        problems.append(f"teacher.api_key_env: environment variable {t.api_key_env} is not set")
    return problems
