"""Teacher backends behind one interface (see base.Teacher), chosen by `teacher.backend`.

    teacher = make_teacher(spec.teacher, base_dir=spec.base_dir)
    with running(teacher):
        async for request, reply in teacher.stream(requests): ...

New backends register a factory in BACKENDS; modules are imported only when chosen, so vllm and
torch are never loaded for an HTTP teacher.
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from flows.teachers.base import Reply, Request, Sampling, Teacher, TeacherUnreachable, request_key

BACKENDS: dict[str, str] = {
    "openai": "flows.teachers.openai_compat:OpenAITeacher",
    "llamacpp": "flows.teachers.llamacpp:LlamaCppTeacher",
    "vllm": "flows.teachers.vllm_offline:VLLMTeacher",
    "transformers": "flows.teachers.hf:TransformersTeacher",
}


def make_teacher(spec, *, base_dir: Path | None = None, endpoint: bool = False) -> Teacher:
    """The teacher for `spec`. endpoint=True: one reachable over HTTP at `base_url` (a llamacpp
    teacher as llama.cpp's server, never in process), for callers that speak to it directly."""
    module, _, cls = BACKENDS[spec.backend].partition(":")
    factory = getattr(importlib.import_module(module), cls)
    if spec.backend == "llamacpp" and not endpoint:
        from flows.teachers.llamacpp_batched import BatchedLlamaTeacher, answers_in_process

        if answers_in_process(spec):
            return BatchedLlamaTeacher(spec, base_dir=base_dir)
    if spec.backend == "openai":
        if spec.batch_api:
            from flows.teachers.batch_api import OpenAIBatchTeacher

            return OpenAIBatchTeacher(spec)
        return factory(spec)
    return factory(spec, base_dir=base_dir)


@contextmanager
def running(teacher: Teacher) -> Iterator[Teacher]:
    """start() then close() whatever happens (errors, Ctrl-C): no orphaned servers or models."""
    try:
        teacher.start()
        yield teacher
    finally:
        teacher.close()


__all__ = ["BACKENDS", "Reply", "Request", "Sampling", "Teacher", "TeacherUnreachable",
           "make_teacher", "request_key", "running"]
