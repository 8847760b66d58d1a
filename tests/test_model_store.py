"""Models on shared storage (storage/model_store.py), on fsspec's memory:// filesystem here (the
integration test in tests/test_cluster_integration.py does the same on a real S3-compatible
server): uploads complete only with their manifest, downloads are checked file by file, training
checkpoints follow the trainer, and a staircase's students and quantized files reach a second
STAIRS_HOME that never had them, through the same `catalog:<id>` every stage resolves."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import pytest
import yaml
from fsspec.implementations.memory import MemoryFileSystem
from typer.testing import CliRunner

from flows import settings
from storage.model_store import MANIFEST, ModelStoreError, RemoteModels
from tests.helpers.openai_server import FakeOpenAI
from tests.helpers.tiny_student import save_tiny_base


@pytest.fixture
def bucket(monkeypatch):
    """A fresh memory:// "bucket" with shards in shards/, models (by default) in models/."""
    name = f"stairs-models-{secrets.token_hex(4)}"
    monkeypatch.setenv("STAIRS_SHARDS_URL", f"memory://{name}/shards")
    yield name
    MemoryFileSystem().rm(name, recursive=True)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def a_model_folder(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "weights.bin").write_bytes(secrets.token_bytes(3000))
    return folder


def test_models_go_beside_remote_shards_unless_a_models_url_is_set(monkeypatch):
    monkeypatch.delenv("STAIRS_MODELS_URL", raising=False)
    assert settings.models_location() is None  # local shards: local models
    monkeypatch.setenv("STAIRS_SHARDS_URL", "s3://bkt/stairs/shards")
    assert settings.models_location() == "s3://bkt/stairs/models"
    monkeypatch.setenv("STAIRS_SHARDS_URL", "file:///tmp/x/shards")
    assert settings.models_location() is None
    monkeypatch.setenv("STAIRS_MODELS_URL", "gs://other/models")
    assert settings.models_location() == "gs://other/models"


def test_a_folder_and_a_file_round_trip_checked_against_their_manifest(bucket, tmp_path):
    store = RemoteModels(f"memory://{bucket}/models")
    folder = a_model_folder(tmp_path / "src" / "student")
    gguf = tmp_path / "src" / "student-Q8_0.gguf"
    gguf.write_bytes(secrets.token_bytes(5000))
    store.publish(folder, "students/run-r0/model")
    store.publish(gguf, "run/r0/quantized/student-Q8_0.gguf")
    manifest = store.manifest("students/run-r0/model")
    assert manifest["kind"] == "folder"
    assert {f["name"]: f["sha256"] for f in manifest["files"]} == {
        "config.json": sha(folder / "config.json"),
        "sub/weights.bin": sha(folder / "sub" / "weights.bin")}

    got = store.fetch("students/run-r0/model", tmp_path / "dst" / "model")
    assert sha(got / "sub" / "weights.bin") == sha(folder / "sub" / "weights.bin")
    got_file = store.fetch("run/r0/quantized/student-Q8_0.gguf", tmp_path / "dst" / "q.gguf")
    assert got_file.read_bytes() == gguf.read_bytes()
    assert store.listing("run/r0/quantized") == ["run/r0/quantized/student-Q8_0.gguf"]
    # Nothing temporary is left on either side.
    fs = MemoryFileSystem()
    assert not [p for p in fs.find(bucket) if "/.tmp-" in p]
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == ["model", "q.gguf"]


def test_an_upload_without_its_manifest_is_no_model(bucket, tmp_path):
    """A writer killed after its files but before the manifest: readers never take the files."""
    store = RemoteModels(f"memory://{bucket}/models")
    folder = a_model_folder(tmp_path / "m")
    store.publish(folder, "students/x/model")
    MemoryFileSystem().rm_file(f"{bucket}/models/students/x/model{MANIFEST}")
    assert not store.has("students/x/model") and store.listing("students/x") == []
    with pytest.raises(ModelStoreError, match=r"memory://.*students/x/model: no such model"):
        store.fetch("students/x/model", tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_a_damaged_download_is_refused_and_leaves_nothing(bucket, tmp_path):
    store = RemoteModels(f"memory://{bucket}/models")
    store.publish(a_model_folder(tmp_path / "m"), "students/x/model")
    MemoryFileSystem().pipe_file(f"{bucket}/models/students/x/model/sub/weights.bin", b"bitrot")
    with pytest.raises(ModelStoreError, match="sub/weights.bin: downloaded file does not match"):
        store.fetch("students/x/model", tmp_path / "dst" / "model")
    assert list((tmp_path / "dst").iterdir()) == []  # no half model, no temporary folder


def test_checkpoints_follow_the_trainer_and_restore_elsewhere(bucket, stairs_home, monkeypatch,
                                                             tmp_path):
    from flows.train.checkpoint_mirror import CheckpointMirror

    folder = settings.models_root() / "students" / "run-r0-abc" / "checkpoints"

    def checkpoint(step: int) -> None:
        ck = folder / f"step-{step:07d}"
        ck.mkdir(parents=True)
        (ck / "state.json").write_text(json.dumps({"step": step}))

    mirror = CheckpointMirror.of(folder)
    checkpoint(2)
    mirror.sync()
    checkpoint(4)
    mirror.sync()
    stored = mirror.remote.listing(mirror.relative)
    assert [s.rsplit("/", 1)[1] for s in stored] == ["step-0000002", "step-0000004"]
    import shutil

    shutil.rmtree(folder / "step-0000002")  # pruned by the trainer: pruned on the store too
    mirror.sync()
    assert [s.rsplit("/", 1)[1] for s in mirror.remote.listing(mirror.relative)] == [
        "step-0000004"]
    # Another machine (another home) with no checkpoint of its own resumes from the stored one.
    monkeypatch.setenv("STAIRS_HOME", str(tmp_path / "elsewhere"))
    other = CheckpointMirror.of(settings.models_root() / "students" / "run-r0-abc" / "checkpoints")
    restored = other.restore()
    assert json.loads((restored / "state.json").read_text()) == {"step": 4}
    assert other.restore() is None  # it has one now
    other.clear()
    assert other.remote.listing(other.relative) == []


def staircase_curriculum(tmp_path: Path, base_url: str, base: Path) -> Path:
    doc = {
        "name": "shared-models",
        "corpus": {"format": "demo", "demo": {"rows": 24, "seed": 3}, "eval_fraction": 0.25},
        "teacher": {"backend": "openai", "model": "fake", "base_url": base_url,
                    "temperature": 0.0},
        "student": {"base": str(base), "max_steps": 5, "batch_size": 2, "checkpoint_every": 2,
                    "checkpoint_minutes": 0, "eval_rows": 2, "eval_max_new_tokens": 4,
                    "evaluate_base": False},
        "quantization": {"gguf_types": ["Q8_0"], "int8_absmax": None, "int4_group_size": None,
                         "eval_rows": 3, "max_new_tokens": 4, "speed_tokens": 2,
                         "imatrix_tokens": 0},
        "staircase": {"rounds": 1, "gate": "threshold", "min_accuracy": 0.0,
                      "score_teacher": False},
    }
    path = tmp_path / "shared-models.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_a_staircase_puts_its_models_on_the_shared_store_and_another_home_uses_them(
        bucket, stairs_home, monkeypatch, tmp_path):
    from flows.cli import app
    from flows.workspace import Workspace

    base = save_tiny_base(tmp_path / "tiny-base")
    published = []
    publish = RemoteModels.publish
    monkeypatch.setattr(RemoteModels, "publish", lambda self, local, relative: (
        published.append(relative), publish(self, local, relative))[1])
    runner = CliRunner()
    with FakeOpenAI() as teacher:
        curriculum = staircase_curriculum(tmp_path, teacher.base_url, base)
        result = runner.invoke(app, ["run", str(curriculum)])
        assert result.exit_code == 0, result.output
    ws = Workspace.open()
    run = ws.catalog.runs(1)[0]
    assert run.status == "completed"
    made = [m for m in ws.catalog.models(run.id) if m.kind in ("student", "quantized")]
    assert {m.kind for m in made} == {"student", "quantized"}
    store = RemoteModels(f"memory://{bucket}/models")
    for m in made:  # every model the run made is on the store, byte for byte
        local = settings.models_root() / m.path
        assert not Path(m.path).is_absolute() and local.exists()
        manifest = store.manifest(m.path)
        files = [local / f["name"] if f["name"] else local for f in manifest["files"]]
        assert [f["sha256"] for f in manifest["files"]] == [sha(f) for f in files], m.name
    # The checkpoints were mirrored while it trained (steps 2 and 4), and cleared with the
    # final model.
    assert [p.rsplit("/", 1)[1] for p in published if "/checkpoints/" in p] == [
        "step-0000002", "step-0000004"]
    assert not [p for p in MemoryFileSystem().find(bucket) if "/checkpoints/" in p]
    q8 = next(m for m in made if m.quant == "Q8_0")
    student = next(m for m in made if m.kind == "student")

    # A second home on the same catalog and store (another machine): it has no model files,
    # and `catalog:<id>` fetches the one it needs, checked against the manifest.
    catalog_url = f"sqlite:///{stairs_home / 'catalog.db'}"
    monkeypatch.setenv("STAIRS_HOME", str(tmp_path / "second-home"))
    monkeypatch.setenv("STAIRS_CATALOG_URL", catalog_url)
    assert not (settings.models_root() / q8.path).exists()
    evaluated = runner.invoke(app, ["eval", f"catalog:{q8.id}", "--curriculum", str(curriculum),
                                    "--rows", "2", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    fetched = settings.models_root() / q8.path
    assert sha(fetched) == store.manifest(q8.path)["files"][0]["sha256"]
    assert not (settings.models_root() / student.path).exists()  # only what it needed

    # Lineage from the catalog alone: quantized file -> student -> base, and the student's
    # training shards back through curation and generation to the corpus.
    shown = runner.invoke(app, ["lineage", f"catalog:{q8.id}", "--json"])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.output)
    assert [m["kind"] for m in doc["models"]] == ["quantized", "student", "base"]
    assert [m["id"] for m in doc["models"][:2]] == [q8.id, student.id]
    trained_on = set(doc["models"][1]["trained_on"])
    shards = {s["id"]: s for s in doc["shards"]}
    assert trained_on and {shards[i]["kind"] for i in trained_on} == {"train"}
    assert {s["stage"] for s in doc["shards"]} >= {"ingest", "generate", "curate"}
    generated = [s for s in doc["shards"] if s["kind"] == "generated"]
    assert generated and {s["template"] for s in generated} == {"rationale"}
    assert all(shards[p]["stage"] == "ingest" for s in generated for p in s["parents"])


def test_lineage_of_a_model_that_is_not_there_is_one_line(stairs_home):
    from flows.cli import app

    runner = CliRunner()
    unknown = runner.invoke(app, ["lineage", "catalog:99"])
    assert unknown.exit_code == 1 and "unknown model: no model 99 in the catalog" in \
        unknown.output and "Traceback" not in unknown.output
    bad = runner.invoke(app, ["lineage", "student.gguf"])
    assert bad.exit_code == 2 and "expected catalog:<model id>" in bad.output
