"""The bench workload through distilabel: a Pipeline that loads the requests and runs a
ChatGeneration task on OpenAILLM, the way distilabel is normally used. distilabel sends the
requests of one input batch concurrently and waits for the whole batch before the next, so the
concurrency C is the task's input_batch_size.

    /work/bench-venvs/distilabel/bin/python bench/peers/distilabel_runner.py \
        --base-url http://127.0.0.1:8911/v1 --n 2000 --concurrency 64
"""

from __future__ import annotations

import os
import tempfile

from peer_common import Meter, parse_args, report, workload


def main() -> None:
    args = parse_args("distilabel")
    workdir = args.workdir or tempfile.mkdtemp(prefix="distilabel-bench-")
    os.environ.setdefault("DISTILABEL_CACHE_DIR", workdir)  # keep its cache out of ~/.cache
    import distilabel
    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import ChatGeneration

    rows = [{"messages": m} for m in workload(args)]
    with Pipeline(name="stairs-bench", cache_dir=workdir) as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=args.concurrency)
        chat = ChatGeneration(
            llm=OpenAILLM(model=args.model, base_url=args.base_url, api_key="unused",
                          max_retries=3, timeout=120,
                          generation_kwargs={"max_new_tokens": args.max_tokens}),
            input_batch_size=args.concurrency)
        load >> chat
    with Meter() as meter:
        distiset = pipeline.run(use_cache=False)
    out = distiset["default"]["train"]
    completed = sum(1 for g in out["generation"] if g)
    report("distilabel", distilabel.__version__, args, meter, completed, args.n - completed)


if __name__ == "__main__":
    main()
