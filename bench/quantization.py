"""Reproduce docs/results.md "## Quantization": quantize a student into every type the
quantization section knows (GGUF F16, Q8_0, Q6_K, Q4_K_M, Q3_K_M, Q2_K, int8 absmax per channel,
int4 g32), measure each file on held-out rows, and compare our GGUF file sizes with llama.cpp's
own pipeline (its converter's output, requantized by its quantizer).

    # the quickstart's round-0 student (model id from `stairs show RUN`), its eval rows:
    STAIRS_HOME=~/.stairs PYTHONPATH=. python bench/quantization.py \
        --curriculum curricula/quickstart.yaml --student catalog:5
    # no student: the base SmolLM2-135M-Instruct stands in, in a scratch STAIRS_HOME
    PYTHONPATH=. python bench/quantization.py --rows 5 --max-new-tokens 16   # smoke run

It runs the real quantize stage in a new run of the curriculum (ingest is reused, so the eval rows
are the ones the staircase scored), and prints the two markdown tables for the results page.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

CURRICULUM = {
    "name": "bench-quantization",
    "description": "quickstart corpus; quantization of the base student",
    "corpus": {"format": "demo", "eval_fraction": 0.2,
               "demo": {"rows": 600, "seed": 0, "people": 2, "colors": 2, "max_count": 9,
                        "tasks": ["sum"]}},
}
SIZE_TYPES = ["Q8_0", "Q6_K", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K"]


def size_comparison(ours_f16: Path, out: Path, imatrix=None) -> list[dict]:
    """Bytes of each type from our F16 export vs from llama.cpp's converter output (the
    embedded GGUF), both through llama.cpp's quantizer with the same importance matrix as the
    stage used (it adds the same quantize.imatrix.* keys to both): differences come from the
    exporter."""
    from flows.embedded import embedded_gguf
    from flows.quantize import IMATRIX_IGNORED
    from flows.quantize.gguf_export import gguf_weight_stats, llama_quantize

    rows = []
    for t in SIZE_TYPES:
        im = None if t in IMATRIX_IGNORED else imatrix
        ours = llama_quantize(ours_f16, out / f"ours-{t}.gguf", t, threads=1, imatrix=im)
        ref = llama_quantize(embedded_gguf(), out / f"llamacpp-{t}.gguf", t, threads=1,
                             allow_requantize=True, imatrix=im)
        a, b = gguf_weight_stats(ours), gguf_weight_stats(ref)
        rows.append({"type": t, "ours_bytes": ours.stat().st_size,
                     "llamacpp_bytes": ref.stat().st_size,
                     "ours_tensor_bytes": a["tensor_bytes"], "llamacpp_tensor_bytes": b["tensor_bytes"],
                     "ours_bpw": a["bits_per_weight"], "llamacpp_bpw": b["bits_per_weight"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100, help="held-out eval rows per artifact")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--speed-tokens", type=int, default=32)
    ap.add_argument("--imatrix-tokens", type=int, default=None,
                    help="calibration tokens for the importance matrix (default: the spec's; 0: none)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--curriculum", type=Path, default=None,
                    help="curriculum whose corpus gives the eval rows (default: the quickstart "
                         "corpus with a 20%% eval split, in a scratch STAIRS_HOME)")
    ap.add_argument("--student", default=None,
                    help="catalog:<id> of a trained student (default: the base model)")
    args = ap.parse_args()
    if args.curriculum is None:
        os.environ.setdefault("STAIRS_HOME", tempfile.mkdtemp(prefix="stairs-bench-quant-"))
    from flows.ingest import ingest
    from flows.models import resolve_model
    from flows.preflight import load_checked
    from flows.quantize import quantize
    from flows.workspace import Workspace
    from storage.tables import Model

    home = Path(os.environ.get("STAIRS_HOME", "~/.stairs")).expanduser()
    doc = (yaml.safe_load(args.curriculum.read_text()) if args.curriculum
           else dict(CURRICULUM))
    # The quantization section's defaults are the full table; only the measurement budget is set.
    doc["quantization"] = {"eval_rows": args.rows, "max_new_tokens": args.max_new_tokens,
                           "speed_tokens": args.speed_tokens}
    if args.imatrix_tokens is not None:
        doc["quantization"]["imatrix_tokens"] = args.imatrix_tokens
    path = home / "bench-quantization.yaml"
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    spec = load_checked(path)
    ws = Workspace.open()
    student = None
    if args.student:
        resolve_model(args.student, ws.catalog)  # a clear error for a bad reference
        student = ws.catalog.get(Model, int(args.student.removeprefix("catalog:")))
    start = time.perf_counter()
    with ws.run_scope(None, lambda: ws.start_run(spec, "bench-quantization").id) as run:
        ingest(spec, ws, run.id)
        result = quantize(spec, ws, run.id, student=student)
    elapsed = time.perf_counter() - start
    f16 = Path(ws.catalog.get(Model, result.artifact("F16").model_id).path)
    imatrix = None
    if result.imatrix_tokens:  # the same matrix the stage made (it is deterministic)
        from flows.quantize import student_imatrix

        imatrix = student_imatrix(ws, run.id, ws.catalog.get(Model, result.student_id), spec)
    sizes = size_comparison(f16, home / "size-comparison", imatrix)
    made = {r.quant: ws.catalog.get(Model, r.model_id).bytes for r in result.table}
    for s in sizes:  # the stage's own files are the ones compared
        if s["type"] in made and made[s["type"]] != s["ours_bytes"]:
            raise SystemExit(f"{s['type']}: the stage's file has {made[s['type']]} bytes, the "
                             f"comparison's {s['ours_bytes']}")

    who = ("base model SmolLM2-135M-Instruct (no trained student in this run)"
           if result.student_is_base_stand_in else result.student)
    print(f"\nstudent: {who}; {result.eval_rows} held-out rows; {elapsed:.0f} s")
    print(f"importance matrix: {result.imatrix_tokens or 'none'} tokens of "
          f"{result.imatrix_dataset or '-'}\n")
    print("| artifact | engine | size (MB) | bits/weight | eval accuracy | perplexity | tokens/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in result.table:
        print(f"| {r.quant} | {r.engine} | {r.size_mb:.1f} | {r.bits_per_weight:.2f} "
              f"| {r.accuracy:.3f} | {r.perplexity:.3f} | {r.tokens_per_s:.1f} |")
    print("\n| type | ours (bytes) | llama.cpp pipeline (bytes) | ours - theirs | "
          "bits/weight ours / theirs |")
    print("|---|---:|---:|---:|---:|")
    for s in sizes:
        print(f"| {s['type']} | {s['ours_bytes']:,} | {s['llamacpp_bytes']:,} | "
              f"{s['ours_bytes'] - s['llamacpp_bytes']:+,} | "
              f"{s['ours_bpw']:.3f} / {s['llamacpp_bpw']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps({"result": result.to_json(), "sizes": sizes,
                                         "elapsed_s": elapsed}, indent=1, default=str))


if __name__ == "__main__":
    main()
