"""The generate stage: a teacher answers every corpus row through a prompt template (flow.py);
dispatch.py sends requests through the response cache and limits, rows.py builds generated rows,
writer.py writes them as shards, resume.py adopts earlier attempts, progress.py reports."""

_FLOW_NAMES = ('generate', 'generate_flow', 'plan', 'sampling_for', 'fingerprint', 'corpus_shards', 'teach',)


def __getattr__(name):
    # The flow module imports Prefect; the stage's internals do not need it, so it is loaded only
    # when one of its names is asked for (`from flows.generate import generate`).
    if name in _FLOW_NAMES:
        from flows.generate import flow

        return getattr(flow, name)
    raise AttributeError(f"module 'flows.generate' has no attribute {name!r}")
