"""distilabel on the teacher-throughput workload (run with the distilabel venv's python).

    /work/bench-venvs/distilabel/bin/python bench/peers/distilabel_runner.py \
        --base-url http://127.0.0.1:PORT/v1 --corpus rows.jsonl --concurrency 64 --workdir DIR

One TextGeneration task on OpenAILLM; input_batch_size = concurrency, since distilabel sends a
batch's requests concurrently. Its own pipeline cache (use_cache=True, in --workdir) is on, as a
user would have it. Prints one JSON line: wall_s, cpu_s (self + children), peak_rss_mb, rows.
"""

import argparse
import json
import resource
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts
    from distilabel.steps.tasks import TextGeneration
    try:
        from distilabel.models import OpenAILLM
    except ImportError:
        from distilabel.llms import OpenAILLM

    rows = [json.loads(line) for line in open(args.corpus)]
    data = [{"instruction": f"Text: {r['passage']}\n\nQuestion: {r['question']}"} for r in rows]
    t0 = time.perf_counter()
    with Pipeline(name="stairs-bench", cache_dir=args.workdir) as pipeline:
        load = LoadDataFromDicts(data=data, batch_size=args.concurrency)
        gen = TextGeneration(llm=OpenAILLM(model="fake", base_url=args.base_url, api_key="x",
                                           max_retries=6, timeout=30,
                                           generation_kwargs={"max_new_tokens": 64}),
                             input_batch_size=args.concurrency)
        load >> gen
    distiset = pipeline.run(use_cache=True)
    wall = time.perf_counter() - t0
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    n = sum(len(d) for split in distiset.values() for d in split.values())
    print(json.dumps({"wall_s": wall, "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime
                      + kids.ru_stime, "peak_rss_mb": max(me.ru_maxrss, kids.ru_maxrss) / 1024,
                      "rows": n}))


if __name__ == "__main__":
    main()
