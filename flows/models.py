"""The one home of model references, for every stage (teachers, students, evaluation, quantize,
serve): what a reference means, where its files are, how it loads, and how it is registered.

A reference is one of:
    "smollm2-135m"        the embedded SmolLM2-135M-Instruct GGUF (flows/embedded.py)
    "qwen2.5-coder-1.5b"  a larger teacher assembled from registry packages (flows/named_models.py)
    "catalog:12"          a model the catalog recorded (a student, a quantized file, ...)
    "/x/student.gguf"     a GGUF file, or a Hugging Face model folder (one with config.json)

    resolve_model("catalog:12", catalog)   -> path of catalog model 12 (file or folder)
    resolve("smollm2-135m")                -> ResolvedModel(kind="gguf", path=...)
    load("smollm2-135m")                   -> (transformers model, tokenizer, hf folder)

transformers dequantizes a GGUF into a float model, which takes ~30 s on 2 cores (tokenizer ~15 s
of it), so the conversion is cached once as safetensors under STAIRS_HOME/cache/hf/<name>-<file
hash> (cache_root()); later loads take a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from flows.embedded import EMBEDDED_NAME, embedded_gguf
from flows.named_models import NAMED_GGUF, named_gguf, named_path

CATALOG_PREFIX = "catalog:"
STAIRS_META = "stairs.json"  # written next to every model we save: lineage and how it was made


class ModelRefError(ValueError, FileNotFoundError):
    """A model reference that does not name an existing model; the message says which and why."""


@dataclass(frozen=True)
class ResolvedModel:
    ref: str          # what the user wrote
    kind: str         # hf | gguf
    path: Path        # folder (hf) or file (gguf)
    catalog_id: int | None = None


def model_path(path: str) -> Path:
    """A catalog Model.path: absolute, or relative to the models root."""
    from flows.settings import models_root

    p = Path(path).expanduser()
    return p if p.is_absolute() else models_root() / p


def local_model(path: str) -> Path:
    """A catalog Model.path as files on this machine: a model under the models root that this
    home lacks is downloaded from the shared model store (storage/model_store.py) first."""
    local = model_path(path)
    if local.exists() or Path(path).expanduser().is_absolute():
        return local
    from storage.model_store import remote_models

    remote = remote_models()
    if remote is None:
        return local
    return remote.fetch(path, local)


def publish_model(local: Path) -> None:
    """Put a model this machine wrote under the models root onto the shared model store, if one
    is configured, so workers elsewhere can fetch it (local_model)."""
    from flows.settings import models_root
    from storage.model_store import remote_models

    remote = remote_models()
    if remote is not None:
        remote.publish(local, Path(local).relative_to(models_root()).as_posix())


def unpublish_model(local: Path) -> None:
    from flows.settings import models_root
    from storage.model_store import remote_models

    remote = remote_models()
    if remote is not None:
        remote.remove(Path(local).relative_to(models_root()).as_posix())


def resolve_model(ref: str, catalog=None, *, base_dir: Path | None = None,
                  fetch: bool = True) -> Path:
    """A reference as a path on disk. A relative path is taken against base_dir (a curriculum's
    folder) when given. A named larger model is fetched and assembled on first use; with
    fetch=False (validation) the name is only checked and its cache path returned."""
    ref = str(ref).strip()
    if ref.startswith(CATALOG_PREFIX):
        from storage.tables import Model

        raw = ref[len(CATALOG_PREFIX):]
        if not raw.isdigit():
            raise ModelRefError(f"{ref!r}: expected catalog:<model id>, e.g. catalog:3")
        if catalog is None:
            from storage.catalog import Catalog

            catalog = Catalog()
        model = catalog.get(Model, int(raw))
        if model is None:
            raise ModelRefError(f"{ref!r}: no model {raw} in the catalog (see `stairs show RUN`)")
        path = local_model(model.path)
        if not path.exists():
            raise ModelRefError(f"{ref!r}: the catalog says {path}, which does not exist")
        return path
    if ref == EMBEDDED_NAME:
        return embedded_gguf()
    if ref in NAMED_GGUF:
        return named_gguf(ref) if fetch else named_path(ref)
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.exists():
        raise ModelRefError(f"{ref!r}: not a catalog:<id>, not a model name "
                            f"({', '.join([EMBEDDED_NAME, *NAMED_GGUF])}), and no such "
                            f"file or folder ({path})")
    return path.resolve()


def resolve(ref: str, catalog=None, *, base_dir: Path | None = None) -> ResolvedModel:
    """A reference as a concrete GGUF file or HF folder, without loading anything."""
    path = resolve_model(ref, catalog, base_dir=base_dir)  # raises ModelRefError naming the ref
    catalog_id = int(ref.split(":", 1)[1]) if ref.startswith(CATALOG_PREFIX) else None
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(ref, "gguf", path, catalog_id=catalog_id)
    if path.is_dir() and (path / "config.json").exists():
        return ResolvedModel(ref, "hf", path, catalog_id=catalog_id)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel(ref, "gguf", ggufs[0].resolve())
    raise ModelRefError(
        f"{ref!r}: not '{EMBEDDED_NAME}', 'catalog:<id>', a GGUF file or a Hugging Face model "
        "folder (one with config.json)")


def curriculum_ref(spec, ref: str) -> str:
    """Paths in a curriculum are relative to its file; names and catalog refs pass through."""
    if ref.startswith(CATALOG_PREFIX) or ("/" not in ref and not ref.endswith(".gguf")):
        return ref
    return str(spec.resolve(ref))


# -- identity --------------------------------------------------------------------------------------
def file_identity(path: Path) -> str:
    """Content hash of a model file or folder: a cache key must change when the weights do, even
    if a path is reused (a student overwritten in place)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return _hash_files(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@lru_cache(maxsize=32)
def _hash_files(files: tuple) -> str:
    h = hashlib.sha256()
    for name, _size, _mtime in files:
        with open(name, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()[:20]


def _quick_hash(path: Path, limit: int = 8 << 20) -> str:
    """Hash of size + the first and last 8 MiB: enough to tell GGUF files apart, and fast."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(limit))
        f.seek(max(0, path.stat().st_size - limit))
        h.update(f.read(limit))
    return h.hexdigest()[:12]


def folder_bytes(path: Path) -> int:
    path = Path(path)
    return path.stat().st_size if path.is_file() else sum(
        p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- loading ---------------------------------------------------------------------------------------
def cache_root() -> Path:
    """Conversions that depend only on a model file's content (a GGUF as safetensors), keyed by
    its hash: STAIRS_HOME/cache, or STAIRS_CACHE to share them between homes (the tests do)."""
    from flows.settings import stairs_home

    root = Path(os.environ.get("STAIRS_CACHE") or stairs_home() / "cache").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def hf_folder(resolved: ResolvedModel) -> Path:
    """An HF folder for the model: itself, or the cached safetensors conversion of a GGUF."""
    if resolved.kind == "hf":
        return resolved.path
    cache = cache_root() / "hf" / f"{resolved.path.stem}-{_quick_hash(resolved.path)}"
    if (cache / "config.json").exists() and (cache / STAIRS_META).exists():
        return cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = resolved.path.parent, resolved.path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The weights are already dequantized to float; only the GGUF marker blocks saving them.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer, model.is_quantized = None, False
    tmp = cache.with_name(cache.name + ".tmp")
    model.save_pretrained(tmp)  # safetensors by default
    tokenizer.save_pretrained(tmp)
    (tmp / STAIRS_META).write_text(json.dumps({"converted_from": str(resolved.path)}))
    if cache.exists():
        shutil.rmtree(cache)
    tmp.rename(cache)  # the cache is visible only once complete
    return cache


def base_hf_folder() -> Path:
    """The embedded SmolLM2-135M-Instruct as a transformers safetensors folder (float32)."""
    return hf_folder(resolve(EMBEDDED_NAME))


def load(ref: str, *, catalog=None, device: str = "cpu", dtype=None):
    """(model, tokenizer, folder) for any reference; GGUF files go through the safetensors cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = hf_folder(resolve(ref, catalog))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or "float32").to(device)
    if tokenizer.pad_token is None:
        # Padding is always masked out of attention and loss, so any token will do.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, folder


def load_folder(path: Path):
    """A saved student folder as a float32 transformers model and tokenizer (a LoRA adapter
    merged in), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(path)


def vocabulary(ref: str, catalog=None, *, base_dir: Path | None = None) -> list[str]:
    """The model's token strings by id, without loading its weights: from a GGUF file's own
    vocabulary (llama.cpp, vocab only: seconds, where transformers' GGUF tokenizer takes ~15 s)
    or an HF folder's tokenizer."""
    resolved = resolve(ref, catalog, base_dir=base_dir)
    if resolved.kind == "gguf":
        import logging

        import llama_cpp as lc

        # What Llama(verbose=False) does: llama.cpp's log lines go through this logger.
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        params = lc.llama_model_default_params()
        params.vocab_only = True  # the tokenizer tables only: no weights, no context
        model = lc.llama_model_load_from_file(str(resolved.path).encode(), params)
        if not model:
            raise ModelRefError(f"{ref!r}: llama.cpp cannot read {resolved.path}")
        try:
            vocab = lc.llama_model_get_vocab(model)
            return [lc.llama_vocab_get_text(vocab, i).decode("utf-8", errors="replace")
                    for i in range(lc.llama_vocab_n_tokens(vocab))]
        finally:
            lc.llama_model_free(model)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolved.path)
    return tok.convert_ids_to_tokens(list(range(len(tok))))


def read_meta(folder: Path) -> dict:
    p = Path(folder) / STAIRS_META
    return json.loads(p.read_text()) if p.exists() else {}


# -- the catalog -----------------------------------------------------------------------------------
def register_base(catalog, ref: str, run_id: str | None = None, *, name: str | None = None):
    """The catalog row of a base model (one per file or folder, reused across runs); a catalog
    reference is returned as is."""
    from storage.tables import Model

    resolved = resolve(ref, catalog)
    if resolved.catalog_id is not None:
        return catalog.get(Model, resolved.catalog_id)
    for m in catalog.models():
        if model_path(m.path) == resolved.path:
            return m
    return catalog.add_model(Model(run_id=run_id, name=name or ref, kind="base",
                                   format=resolved.kind, path=str(resolved.path),
                                   bytes=folder_bytes(resolved.path),
                                   params_json=json.dumps({"ref": ref})))


def register_embedded_base(catalog):
    """The embedded base as a transformers folder: what the quantize stage starts from when a run
    has no trained student yet."""
    return register_base(catalog, str(base_hf_folder()), name=EMBEDDED_NAME)
