"""The bench workload through distilabel: one TextGeneration task on OpenAILLM pointed at
base_url. distilabel sends one input batch's requests concurrently, so input_batch_size = C is its
concurrency knob. Its pipeline cache (use_cache=True, under --workdir) is on, as a user has it.

    /work/bench-venvs/distilabel/bin/python bench/peers/distilabel_runner.py \
        --base-url http://127.0.0.1:8911/v1 --n 2000 --concurrency 64 --workdir /tmp/dl-bench
"""

from __future__ import annotations

import os
import tempfile

from peer_common import Meter, parse_args, report, workload


def main() -> None:
    args = parse_args("distilabel")
    workdir = args.workdir or tempfile.mkdtemp(prefix="distilabel-bench-")
    os.environ.setdefault("DISTILABEL_TELEMETRY", "0")
    from importlib.metadata import version

    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration

    requests = workload(args)
    if any(len(m) != 1 or m[0]["role"] != "user" for m in requests):
        raise SystemExit("distilabel_runner: each request must be one user message")
    data = [{"instruction": m[0]["content"]} for m in requests]
    with Meter() as meter:
        with Pipeline(name="stairs-bench", cache_dir=workdir) as pipeline:
            load = LoadDataFromDicts(data=data, batch_size=args.concurrency)
            gen = TextGeneration(
                llm=OpenAILLM(model=args.model, base_url=args.base_url, api_key="unused",
                              max_retries=3, timeout=30,
                              generation_kwargs={"max_new_tokens": args.max_tokens}),
                input_batch_size=args.concurrency)
            load >> gen
        distiset = pipeline.run(use_cache=True)
    rows = [r for split in distiset.values() for d in split.values() for r in d]
    completed = sum(1 for r in rows if r.get("generation"))
    report("distilabel", version("distilabel"), args, meter, completed, args.n - completed,
           workdir=workdir)


if __name__ == "__main__":
    main()
