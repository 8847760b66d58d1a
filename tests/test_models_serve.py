"""resolve_model for catalog ids, the embedded name and paths; llama.cpp's server on loopback."""

from __future__ import annotations

import httpx
import pytest

from flows.models import ModelRefError, resolve_model
from flows.serve import ServeError, serving
from storage.tables import Model


def test_resolve_catalog_id_relative_and_absolute(workspace, stairs_home, tmp_path):
    rel = stairs_home / "models" / "r" / "a.gguf"
    rel.parent.mkdir(parents=True)
    rel.write_bytes(b"x")
    m1 = workspace.catalog.add_model(Model(name="a", kind="quantized", format="gguf",
                                           path="r/a.gguf"))
    absolute = tmp_path / "b.gguf"
    absolute.write_bytes(b"x")
    m2 = workspace.catalog.add_model(Model(name="b", kind="quantized", format="gguf",
                                           path=str(absolute)))
    assert resolve_model(f"catalog:{m1.id}", workspace.catalog) == rel
    assert resolve_model(f"catalog:{m2.id}", workspace.catalog) == absolute
    assert resolve_model(str(absolute)) == absolute


def test_resolve_errors_name_the_reference(workspace):
    with pytest.raises(ModelRefError, match="no model 999"):
        resolve_model("catalog:999", workspace.catalog)
    with pytest.raises(ModelRefError, match="catalog:<model id>"):
        resolve_model("catalog:abc", workspace.catalog)
    missing = workspace.catalog.add_model(Model(name="gone", kind="quantized", format="gguf",
                                                path="/no/such/file.gguf"))
    with pytest.raises(ModelRefError, match="does not exist"):
        resolve_model(f"catalog:{missing.id}", workspace.catalog)
    with pytest.raises(ModelRefError, match="no such file"):
        resolve_model("/no/such/model.gguf")


def test_resolve_embedded_name():
    assert resolve_model("smollm2-135m").name.endswith(".gguf")


def test_serving_refuses_a_folder(tmp_path):
    with pytest.raises(ServeError, match="not one"):
        with serving(tmp_path):
            pass


def test_tiny_gguf_served_on_loopback_and_stopped(workspace, tmp_path):
    from flows.quantize.gguf_export import export_gguf
    from tests.helpers.tiny_llama import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    path = export_gguf(tiny_llama(tok), tok, tmp_path / "tiny-F16.gguf")
    model = workspace.catalog.add_model(Model(name="tiny", kind="quantized", format="gguf",
                                              quant="F16", path=str(path)))
    with serving(f"catalog:{model.id}", catalog=workspace.catalog, n_ctx=256) as server:
        assert server.host == "127.0.0.1"
        r = httpx.post(f"{server.base_url}/completions", timeout=60,
                       json={"prompt": "Vorla has", "max_tokens": 4, "temperature": 0})
        assert r.status_code == 200
        assert r.json()["usage"]["completion_tokens"] >= 1
        process = server.process
    assert process.poll() is not None  # stopped, not orphaned


def test_interrupt_while_starting_stops_the_child(tmp_path, monkeypatch):
    """SIGTERM/Ctrl-C that lands before the server answers must not leave it running."""
    import subprocess

    from flows import serve

    spawned = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        spawned.append(real_popen(*args, **kwargs))
        return spawned[-1]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(serve.subprocess, "Popen", popen)
    monkeypatch.setattr(serve.httpx, "get", interrupted)
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    with pytest.raises(KeyboardInterrupt):
        serve.start_server(model, log_path=tmp_path / "log")
    assert len(spawned) == 1 and spawned[0].poll() is not None
