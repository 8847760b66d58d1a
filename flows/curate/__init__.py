"""The curate stage: decide which generated rows the student sees, and in what order (flow.py).

Modules, one idea each: answers (vectorized answer normalization), ngrams (word n-gram hashes),
filters (named per-row drop reasons), consistency (self-consistency vote and confidence),
decontam (eval n-gram overlap), minhash (MinHash + LSH near-duplicate clusters), dedup (exact,
near, semantic; keep rule), curriculum (difficulty, stages, order), pipeline (all of it in order),
check (pre-flight)."""

_FLOW_NAMES = ('curate', 'curate_flow', 'CurateError', 'latest_run_with', 'eval_ngrams', 'run_pipeline',)


def __getattr__(name):
    # The flow module imports Prefect; the stage's internals do not need it, so it is loaded only
    # when one of its names is asked for (`from flows.curate import curate`).
    if name in _FLOW_NAMES:
        from flows.curate import flow

        return getattr(flow, name)
    raise AttributeError(f"module 'flows.curate' has no attribute {name!r}")
