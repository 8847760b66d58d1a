"""Quantize stage: make every configured small artifact of a round's student, register each in the
catalog as a quantized Model (parent = the student), and measure each on the held-out eval rows.

    stairs quantize curricula/quickstart.yaml

Artifacts (curriculum section `quantization`): a float GGUF written by our exporter, llama.cpp's
k-quants of it, absmax int8 and group-wise int4 safetensors folders, GPTQ on a GPU. Each gets
accuracy, perplexity, size, bits/weight and decode tokens/s: Metric rows in the catalog and one
table per run (a Prefect table artifact when it runs as a flow). Until a trained student exists
in the run, the base model (embedded SmolLM2-135M-Instruct) stands in and the table says so.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pyarrow as pa
from prefect import flow

from flows.evaluate import eval_template, held_out_rows
from flows.evaluate.engines import GGUFEngine, TorchEngine
from flows.evaluate.saved_logits import SavedLogits
from flows.evaluate.score import measure
from flows.models import (
    folder_bytes,
    load_folder,
    local_model,
    publish_model,
    register_embedded_base,
)
from flows.orchestration import in_flow_run, step, task_runner
from flows.params import RoundParams
from flows.quantize import absmax
from flows.quantize.gguf_export import FLOAT_TYPES, export_gguf, llama_quantize
from flows.quantize.imatrix import Imatrix, compute_imatrix
from flows.results import QuantizeResult
from flows.spec import Curriculum
from flows.workspace import Workspace
from storage.tables import Model

# llama.cpp types whose quantizer takes no importance matrix (the rest are shaped by it).
IMATRIX_IGNORED = ("Q8_0",)
TABLE_COLUMNS = ("artifact", "format", "quant", "engine", "size_mb", "bits_per_weight",
                 "accuracy", "perplexity", "kl_divergence", "same_top_token", "tokens_per_s",
                 "model_id")


def find_student(ws: Workspace, run_id: str, round_index: int) -> Model | None:
    students = [m for m in ws.catalog.models(run_id)
                if m.kind == "student" and m.round_index == round_index]
    return students[-1] if students else None


def calibration_texts(ws: Workspace, run_id: str, limit: int) -> list[str]:
    ingest = ws.latest_stage("ingest", run_id=run_id)
    rows = ws.store.table(ws.shards(ingest, "corpus")).to_pylist()[:limit]
    return [f"{r['passage']}\n{r['question'] or ''}" for r in rows]


def calibration_ids(ws: Workspace, run_id: str, student: Model, tokenizer,
                    spec: Curriculum) -> tuple[list[list[int]], str]:
    """Token ids of the text the student was trained on (its run and round's curated rows,
    prompt + target as the train stage encodes them) and a label for it; this run's corpus text
    when there are none (the base model standing in)."""
    from flows.train.examples import RowError, row_examples

    shards = (ws.stage_shards(student.run_id, "curate", "train", round_index=student.round_index)
              if student.run_id and student.round_index is not None else [])
    ids = []
    for row in ws.store.table(shards).to_pylist() if shards else []:
        try:
            examples = row_examples(row, tokenizer, spec.student.objective,
                                    spec.student.max_length)
        except RowError:
            continue  # the train stage skipped it too
        ids += [e.input_ids for e in examples if e is not None]
    if ids:
        return ids, f"{student.run_id} round {student.round_index} curated train rows"
    texts = calibration_texts(ws, run_id, 10_000)
    return [tokenizer(t)["input_ids"] for t in texts], f"{run_id} corpus"


def student_imatrix(ws: Workspace, run_id: str, student: Model, spec: Curriculum) -> Imatrix:
    """The importance matrix of `student` over its own training text, as the stage makes it."""
    from transformers import AutoTokenizer

    student_dir = local_model(student.path)
    ids, dataset = calibration_ids(ws, run_id, student,
                                   AutoTokenizer.from_pretrained(student_dir), spec)
    return imatrix_step(student_dir, ids, spec.quantization.imatrix_tokens, dataset)


# -- steps (Prefect tasks inside a flow run, plain calls otherwise) -----------------------------
@step(name="export-gguf")
def export_step(student_dir: Path, out: Path, float_type: str) -> Path:
    model, tok = load_folder(student_dir)
    return export_gguf(model, tok, out, float_type=float_type)


@step(name="imatrix")
def imatrix_step(student_dir: Path, token_ids: list[list[int]], max_tokens: int,
                 dataset: str) -> Imatrix:
    model, _ = load_folder(student_dir)
    return compute_imatrix(model, token_ids, max_tokens=max_tokens, dataset=dataset)


@step(name="llama-quantize")
def llama_quantize_step(src: Path, dst: Path, quant: str, threads: int | None,
                        imatrix: Imatrix | None = None) -> Path:
    return llama_quantize(src, dst, quant, threads=threads, imatrix=imatrix)


@step(name="absmax-quantize")
def absmax_step(student_dir: Path, out: Path, scheme: absmax.Scheme,
                include_embeddings: bool) -> list[dict]:
    model, tok = load_folder(student_dir)
    return absmax.quantize_model(model, scheme, out, tok, include_embeddings=include_embeddings)


@step(name="measure")
def measure_step(artifact: dict, rows: list[dict], student_dir: Path, q, template,
                 float_logits: SavedLogits, is_float: bool = False) -> dict:
    """Accuracy, perplexity, speed and size of one artifact. The float GGUF (`is_float`) saves
    its logits in `float_logits`; every other artifact is also measured for its fidelity to
    them (KL divergence, same top token)."""
    from transformers import AutoTokenizer

    from flows.settings import cpu_threads

    tok = AutoTokenizer.from_pretrained(student_dir)
    path = Path(artifact["path"])
    threads = q.threads or cpu_threads()
    if artifact["format"] == "gguf":
        engine = GGUFEngine(path, threads=threads)
        bits = engine.bits_per_weight()
    else:
        if artifact["format"] == "gptq":
            from flows.quantize.gptq import load_gptq

            model = load_gptq(path)
        else:
            model = absmax.load_quantized(path)
        engine = TorchEngine(model, tok, threads=threads)
        params = sum(p.numel() for p in model.parameters())
        weights = [p for p in path.iterdir() if p.suffix == ".safetensors"]
        bits = 8 * sum(p.stat().st_size for p in weights) / params
    try:
        result = measure(engine, rows, template, tokenizer=tok,
                         max_new_tokens=q.max_new_tokens, speed_tokens=q.speed_tokens,
                         description=f"measure {path.name}",
                         reference=None if is_float else float_logits,
                         record=float_logits if is_float else None)
    finally:
        engine.close()
        float_logits.close()  # the float file, if a miss had to open it
    return {**result, "bits_per_weight": bits, "bytes": folder_bytes(path),
            "engine": "llama.cpp" if artifact["format"] == "gguf" else "torch"}


# -- the stage ----------------------------------------------------------------------------------
def _fingerprint(spec: Curriculum, student: Model, rows: list[dict]) -> str:
    h = hashlib.sha256(spec.fingerprint("quantization", "generate").encode())
    h.update(f"{student.id}:{student.path}:{student.bytes}".encode())
    for r in rows:
        h.update(r["id"].encode())
    return h.hexdigest()[:16]


def plan_artifacts(spec: Curriculum, student: Model, out: Path) -> list[dict]:
    """Every artifact the spec asks for, in the order they are made (the float GGUF first: the
    llama.cpp types are made from it)."""
    q = spec.quantization
    base = student.name.replace("/", "-")
    arts = [{"name": f"{base}-{q.gguf_float}", "format": "gguf", "quant": q.gguf_float,
             "path": out / f"{base}-{q.gguf_float}.gguf"}]
    arts += [{"name": f"{base}-{t}", "format": "gguf", "quant": t, "path": out / f"{base}-{t}.gguf"}
             for t in q.gguf_types]
    if q.int8_absmax:
        scheme = absmax.Scheme("int8", granularity=q.int8_absmax)
        arts.append({"name": f"{base}-{scheme.label}", "format": scheme.format,
                     "quant": scheme.label, "scheme": scheme, "path": out / scheme.label})
    if q.int4_group_size:
        scheme = absmax.Scheme("int4", group_size=q.int4_group_size, symmetric=q.int4_symmetric)
        arts.append({"name": f"{base}-{scheme.label}", "format": scheme.format,
                     "quant": scheme.label, "scheme": scheme, "path": out / scheme.label})
    if q.gptq_bits:
        label = f"gptq-{q.gptq_bits}bit-g{q.gptq_group_size}"
        arts.append({"name": f"{base}-{label}", "format": "gptq", "quant": label,
                     "path": out / label})
    return arts


def quantize(spec: Curriculum, ws: Workspace, run_id: str, *, round_index: int = 0,
             student: Model | None = None) -> QuantizeResult:
    """Make, register and measure every configured artifact of this round's student."""
    from flows.settings import cpu_threads, models_root

    q = spec.quantization
    stand_in = False
    if student is None:
        student = find_student(ws, run_id, round_index)
    if student is None:
        student, stand_in = register_embedded_base(ws.catalog), True
    if student.format != "hf":
        raise ValueError(f"student model {student.id} has format {student.format!r}; the quantize "
                         "stage starts from a transformers (hf) folder")
    student_dir = local_model(student.path)
    rows, _ = held_out_rows(ws, run_id, q.eval_rows)
    if not rows:
        raise RuntimeError(f"run {run_id}: the eval split is empty (corpus.eval_fraction is 0?)")
    fingerprint = _fingerprint(spec, student, rows)
    done = ws.reuse(run_id, "quantize", fingerprint, round_index=round_index)
    if done is not None:
        return QuantizeResult.of(run_id, ws.summary(done))
    # One folder per quantize stage: a retried round quantizes a second student, and its files
    # must not overwrite the first try's, which the catalog still lists.
    out = models_root() / run_id / f"r{round_index}" / "quantized" / fingerprint
    with ws.stage(run_id, "quantize", round_index=round_index, fingerprint=fingerprint,
                  params={"quantization": q.model_dump(mode="json"), "student_id": student.id,
                          "student_is_base_stand_in": stand_in}) as st:
        artifacts = plan_artifacts(spec, student, out)
        template = eval_template(spec)
        float_gguf = artifacts[0]["path"]
        imatrix = None
        if q.imatrix_tokens and any(t not in IMATRIX_IGNORED for t in q.gguf_types):
            imatrix = student_imatrix(ws, run_id, student, spec)
            st.summary.update({"imatrix_tokens": imatrix.tokens,
                               "imatrix_dataset": imatrix.dataset})
        table = []
        # The float file's logits, saved by its own measurement for the fidelity of the others.
        # A fixed folder, emptied first: a killed stage's leftovers go with the rerun.
        logits_dir = out / ".float-logits"
        shutil.rmtree(logits_dir, ignore_errors=True)
        float_logits = SavedLogits(logits_dir, lambda: GGUFEngine(
            float_gguf, threads=q.threads or cpu_threads()))
        try:
            for art in artifacts:
                if art is artifacts[0]:
                    export_step(student_dir, art["path"], q.gguf_float)
                elif art["format"] == "gguf":
                    llama_quantize_step(float_gguf, art["path"], art["quant"], q.threads,
                                        _imatrix_for(art, imatrix))
                elif art["format"] == "gptq":
                    from flows.quantize.gptq import gptq_quantize

                    gptq_quantize(student_dir, art["path"], bits=q.gptq_bits,
                                  group_size=q.gptq_group_size,
                                  calibration=calibration_texts(ws, run_id, q.gptq_calibration_rows))
                else:
                    report = absmax_step(student_dir, art["path"], art["scheme"], q.quantize_embeddings)
                    art["worst_layer_rel_error"] = max(r["rel_error"] for r in report)
                result = measure_step(art, rows, student_dir, q, template, float_logits,
                                      is_float=art is artifacts[0])
                publish_model(art["path"])  # onto the shared model store, when there is one
                model = ws.catalog.add_model(Model(
                    run_id=run_id, stage_id=st.id, round_index=round_index, name=art["name"],
                    kind="quantized", format=art["format"], quant=art["quant"],
                    path=Path(art["path"]).relative_to(models_root()).as_posix(),
                    bytes=result["bytes"], parent_id=student.id,
                    params_json=json.dumps({"bits_per_weight": result["bits_per_weight"],
                                            "engine": result["engine"],
                                            "imatrix_tokens": getattr(_imatrix_for(art, imatrix),
                                                                      "tokens", None)})))
                row = {"artifact": art["name"], "format": art["format"], "quant": art["quant"],
                       "engine": result["engine"], "size_mb": round(result["bytes"] / 2**20, 2),
                       "bits_per_weight": round(result["bits_per_weight"], 3),
                       "accuracy": result["accuracy"], "perplexity": round(result["perplexity"], 4),
                       "kl_divergence": _rounded(result.get("kl_divergence"), 6),
                       "same_top_token": _rounded(result.get("same_top_token"), 4),
                       "tokens_per_s": round(result["tokens_per_s"], 1), "model_id": model.id}
                measured = ("accuracy", "perplexity", "tokens_per_s", "bits_per_weight",
                            *(("kl_divergence", "same_top_token") if "kl_divergence" in result else ()))
                for name in measured:
                    ws.catalog.log_metric(name, result[name], run_id=run_id, stage_id=st.id,
                                          model_id=model.id, round_index=round_index, split="eval",
                                          meta={"table": "quantization", "artifact": art["name"],
                                                "eval_rows": result["eval_rows"]})
                ws.catalog.log_metric("size_bytes", result["bytes"], run_id=run_id, stage_id=st.id,
                                      model_id=model.id, round_index=round_index,
                                      meta={"table": "quantization", "artifact": art["name"]})
                table.append(row)
                st.summary.update({"artifacts": len(table), "table": table})  # kept if a later one fails
        finally:
            shutil.rmtree(logits_dir, ignore_errors=True)
        ws.store.write(pa.Table.from_pylist(table), stage=st.stage, kind="quantization-table")
        st.summary.update({"round": round_index, "student_id": student.id, "student": student.name,
                           "student_is_base_stand_in": stand_in, "eval_rows": len(rows)})
        if in_flow_run():
            _table_artifact(run_id, round_index, student, stand_in, table)
    return QuantizeResult.of(run_id, st.summary)


def _rounded(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def _imatrix_for(art: dict, imatrix: Imatrix | None) -> Imatrix | None:
    """The importance matrix this artifact is quantized with: none for the float export and
    for types whose quantizer ignores it (their files would otherwise claim one)."""
    used = art["format"] == "gguf" and art["quant"] not in (*IMATRIX_IGNORED, *FLOAT_TYPES)
    return imatrix if used else None


def _table_artifact(run_id: str, round_index: int, student: Model, stand_in: bool,
                    table: list[dict]) -> None:
    from prefect.artifacts import create_table_artifact

    who = f"{student.name} (model {student.id}{', base model standing in' if stand_in else ''})"
    create_table_artifact(table=table, key=f"quantization-{run_id}-r{round_index}".lower(),
                          description=f"Quantized artifacts of {who}, round {round_index}")


@flow(name="quantize", log_prints=True, task_runner=task_runner())
def quantize_flow(params: RoundParams) -> QuantizeResult:
    """Quantize the run's student (the base model until one is trained) and measure each file."""
    from flows.ingest import ingest

    spec = params.load()
    ws = Workspace.open()
    with ws.run_scope(params.run_id, lambda: ws.start_run(spec, "quantize").id) as run:
        ingest(spec, ws, run.id)  # the held-out rows; reused when already done
        return quantize(spec, ws, run.id, round_index=params.round_index)
