"""The embedded teacher's two paths on the same requests: llama-cpp-python's server (one
request at a time, however many are sent) and the in-process batched teacher that make_teacher
picks for greedy and seeded text requests (flows/teachers/llamacpp_batched.py). Reports wall time
(model load and server start included) and how many replies are identical.

    PYTHONPATH=. python bench/teacher_paths.py              # 64 quickstart prompts, greedy
    PYTHONPATH=. python bench/teacher_paths.py --rows 16
    PYTHONPATH=. python bench/teacher_paths.py --temperature 0.7 --samples 4   # the climb's
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def replies(teacher, requests) -> dict:
    """{request key: reply} from a started teacher (bench/sample_prefill.py uses it too)."""
    from flows.teachers.aio import run_coroutine

    got = {}

    async def ask():
        async for batch in teacher.stream(requests):
            got.update({req.key: reply for req, reply in batch})

    run_coroutine(ask())
    return got


def answers(teacher, requests) -> tuple[list, float]:
    from flows.teachers import running

    start = time.perf_counter()
    with running(teacher):
        got = replies(teacher, requests)
    return [got[r.key] for r in requests], time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--samples", type=int, default=1, help="seeded samples per prompt")
    args = ap.parse_args()
    os.environ.setdefault("STAIRS_HOME", tempfile.mkdtemp(prefix="stairs-bench-"))
    from flows.ingest import demo
    from flows.prompting.template import load_template
    from flows.spec import load
    from flows.teachers import Request, Sampling, make_teacher
    from flows.teachers.llamacpp import LlamaCppTeacher

    spec = load(str(Path(__file__).resolve().parent.parent / "curricula/quickstart.yaml"))
    template = load_template(spec.generate.template)
    rows = [dict(r, id=str(i)) for i, r in enumerate(demo.generate(args.rows, seed=3))]
    teacher = spec.teacher.model_copy(update={"temperature": args.temperature, "seed": 0})
    sampling = Sampling(args.temperature, teacher.top_p, teacher.max_tokens, 0, 0)
    requests = [Request(f"{i}.{k}", template.render(r), sampling.for_sample(k), k)
                for i, r in enumerate(rows) for k in range(args.samples)]
    batched, batched_s = answers(make_teacher(teacher), requests)
    served, served_s = answers(LlamaCppTeacher(teacher), requests)
    same = sum(a.text == b.text and a.completion_tokens == b.completion_tokens
               for a, b in zip(batched, served))
    tokens = sum(a.completion_tokens for a in batched)
    how = ("greedy" if not args.temperature else
           f"temperature {args.temperature}, top_p {teacher.top_p}, {args.samples} seeded "
           "samples each")
    print(f"{args.rows} quickstart prompts, {how}, at most {teacher.max_tokens} tokens; "
          f"{len(requests)} requests, {tokens} tokens generated")
    print("| path | wall s | tokens/s |\n|---|---:|---:|")
    print(f"| llama-cpp-python server | {served_s:.1f} | {tokens / served_s:.1f} |")
    print(f"| in-process, batched | {batched_s:.1f} | {tokens / batched_s:.1f} |")
    print(f"identical replies: {same} of {len(requests)}; speed-up {served_s / batched_s:.2f}x")


if __name__ == "__main__":
    main()
