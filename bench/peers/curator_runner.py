"""The bench workload through Bespoke Labs Curator: an LLM subclass whose prompt() returns the
request's messages, on its OpenAI backend pointed at base_url, with max_concurrent_requests = C and
rate limits set out of the way. Curator caches responses under its working dir by a fingerprint
of the dataset and the prompt code, so a rerun with the same --workdir measures its cache.

    /work/bench-venvs/curator/bin/python bench/peers/curator_runner.py \
        --base-url http://127.0.0.1:8911/v1 --n 2000 --concurrency 64 --workdir /tmp/curator-bench
"""

from __future__ import annotations

import os
import tempfile

from peer_common import Meter, parse_args, report, workload


def main() -> None:
    args = parse_args("curator")
    workdir = args.workdir or tempfile.mkdtemp(prefix="curator-bench-")
    os.environ.setdefault("TELEMETRY_ENABLED", "false")  # no internet here; stay offline
    os.environ.setdefault("CURATOR_CACHE_DIR", workdir)
    # Curator counts tokens with tiktoken, which downloads its BPE file on first use; offline, we
    # point tiktoken at the copy litellm (a curator dependency) ships in its package.
    import litellm.litellm_core_utils.tokenizers as bundled

    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.dirname(bundled.__file__))
    from importlib.metadata import version

    from bespokelabs import curator

    class Chat(curator.LLM):
        def prompt(self, row):
            return row["messages"]

        def parse(self, row, response):
            return {"response": response}

    llm = Chat(model_name=args.model, backend="openai",
               generation_params={"max_tokens": args.max_tokens},
               backend_params={"base_url": args.base_url, "api_key": "unused",
                               "max_concurrent_requests": args.concurrency,
                               "max_requests_per_minute": 10_000_000,
                               "max_tokens_per_minute": 10_000_000_000,
                               "max_retries": 3, "require_all_responses": False})
    rows = [{"messages": m} for m in workload(args)]
    with Meter() as meter:
        result = llm(rows, working_dir=workdir)
    dataset = getattr(result, "dataset", result)
    completed = sum(1 for r in dataset["response"] if r)
    report("curator", version("bespokelabs-curator"), args, meter, completed,
           args.n - completed, workdir=workdir)


if __name__ == "__main__":
    main()
