"""Student training throughput: our loop (flows/train/trainer.py) vs a plain transformers
`Trainer`, same model, rows, batch size, steps, optimizer (AdamW, linear schedule), precision
and length-grouped batching, side by side in one run. A third row is our loop with the
vocabulary projection at every position (`ours-full-logits`), as it ran before it kept only the
positions a loss reads (trainer.keep_target_logits). A fourth, `ours-lora`, is our loop training
LoRA adapters (r 16, alpha 32, every linear layer: the quickstart's student.method) instead of
every weight.

Each measurement runs in its own subprocess (so peak memory is that trainer's alone) and the two
trainers alternate (ours, Trainer, ours, Trainer, ...) so background load hits both alike; the
table gives medians. Tokens/s counts real (non-padding) tokens; the model load is not timed.

    PYTHONPATH=. python bench/train_throughput.py                 # 135M student, 3 repeats
    PYTHONPATH=. python bench/train_throughput.py --steps 3 --repeats 2   # quicker
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time

TRAINERS = ("ours", "ours-full-logits", "hf-trainer", "ours-lora")


def demo_rows(n: int) -> list[dict]:
    from flows.ingest import demo
    from flows.prompting import load_template

    template = load_template("rationale")
    rows = []
    for i, r in enumerate(demo.generate(n, seed=11)):
        first = r["passage"].split(". ")[0].rstrip(".") + "."
        counts = re.findall(r"\d+", first)
        rows.append({"id": f"b{i}", "answer": r["answer"],
                     "rationale": f"{first} {' + '.join(counts)} = {r['answer']}.",
                     "messages": json.dumps(template.render(r))})
    return rows


def peak_memory_mb(device: str) -> float:
    import torch

    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(which: str, args) -> dict:
    import torch

    from flows import models
    from flows.train import examples
    from flows.train.trainer import TrainConfig, cpu_bf16, fit, pick_device, prepare

    device = pick_device("auto")
    model, tok, _ = models.load(args.model, device=device)
    # Both trainers in the same precision: bf16 autocast on a GPU, and on a CPU where
    # --cpu-bf16 (auto: the CPU has native bfloat16) says so, as the train stage decides.
    bf16 = device == "cuda" or cpu_bf16({"auto": "auto", "on": True, "off": False}[args.cpu_bf16])
    cfg = TrainConfig(objective="cot", max_steps=args.steps, batch_size=args.batch_size,
                      learning_rate=5e-5, warmup_ratio=0.0, max_length=args.max_length, seed=0,
                      cpu_bf16=bf16, method="lora" if which == "ours-lora" else "full",
                      lora_r=16, lora_alpha=32)
    groups = examples.build(demo_rows(args.rows), tok, "cot", cfg.max_length).groups
    if which.startswith("ours"):
        if which == "ours-full-logits":
            from flows.train import trainer

            trainer.keeps_logits = lambda model: False
        model = prepare(model, cfg)
        result = fit(model, groups, cfg, pad_id=tok.pad_token_id, device=device, progress=False)
        tokens, seconds = result.tokens, result.seconds
    else:
        tokens, seconds = run_hf_trainer(model, tok, groups, cfg, device, bf16)
    return {"trainer": which, "precision": "bf16" if bf16 else "fp32", "tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds, "peak_mb": peak_memory_mb(device),
            "device": device, "threads": torch.get_num_threads()}


def run_hf_trainer(model, tok, groups, cfg, device, bf16: bool) -> tuple[int, float]:
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    ds = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels}
                            for g in groups for e in g])
    pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
    seen = {"tokens": 0}

    def collate(features):
        batch = pad(features)
        seen["tokens"] += int(batch["attention_mask"].sum())
        return batch

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out, per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps,
            learning_rate=cfg.learning_rate, lr_scheduler_type="linear", warmup_steps=0,
            weight_decay=0.0, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
            train_sampling_strategy="group_by_length", save_strategy="no", report_to=[],
            logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
            bf16=bf16, use_cpu=device == "cpu", remove_unused_columns=False)
        trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collate)
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.synchronize()
    return seen["tokens"], seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cpu-bf16", choices=["auto", "on", "off"], default="off",
                   help="bf16 autocast on CPU for both trainers (default off, as the train "
                        "stage's student.cpu_bf16)")
    p.add_argument("--one", choices=TRAINERS, help=argparse.SUPPRESS)
    args = p.parse_args()
    # Exactly one epoch for both: every row is seen once, so both trainers process the same
    # tokens (only their order and padding differ); with spare rows Trainer's length-grouped
    # sampler starts from the longest batch and would see longer rows than ours.
    args.rows = args.steps * args.batch_size
    if args.one:
        print(json.dumps(measure(args.one, args)))
        return
    from flows import models

    models.hf_folder(models.resolve(args.model))  # convert/cache once, outside the timings
    results: dict[str, list[dict]] = {which: [] for which in TRAINERS}
    passthrough = ["--model", args.model, "--steps", str(args.steps), "--batch-size",
                   str(args.batch_size), "--max-length",
                   str(args.max_length), "--cpu-bf16", args.cpu_bf16]
    for _ in range(args.repeats):
        for which in TRAINERS:
            out = subprocess.run([sys.executable, __file__, "--one", which, *passthrough],
                                 capture_output=True, text=True, check=True).stdout
            results[which].append(json.loads(out.strip().splitlines()[-1]))
            print(which, results[which][-1], file=sys.stderr)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("tokens_per_s", "peak_mb")}
           for k, v in results.items()}
    r = results["ours"][0]
    print(f"model {args.model}, device {r['device']} ({r['threads']} torch threads), "
          f"{r['precision']}, "
          f"{args.steps} steps x batch {args.batch_size}, {args.rows} demo rows, cot, full "
          f"fine-tune unless named, medians of {args.repeats}")
    print("| trainer | tokens/s | peak memory (MiB) |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v['tokens_per_s']:.1f} | {v['peak_mb']:.0f} |")
    for other in ("hf-trainer", "ours-full-logits", "ours-lora"):
        print(f"| ratio ours / {other} | "
              f"{med['ours']['tokens_per_s'] / med[other]['tokens_per_s']:.2f}x"
              f" | {med['ours']['peak_mb'] / med[other]['peak_mb']:.2f}x |")


if __name__ == "__main__":
    main()
