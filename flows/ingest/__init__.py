"""The ingest stage: read a corpus (readers.py), validate rows with named reject reasons and
stable content ids (rows.py), hold out the eval split, write corpus/eval/rejects shards (flow.py).
demo.py makes the built-in demo corpus."""

_FLOW_NAMES = ('ingest', 'ingest_flow', 'source_fingerprint', 'read_rows',)


def __getattr__(name):
    # The flow module imports Prefect; the stage's internals do not need it, so it is loaded only
    # when one of its names is asked for (`from flows.ingest import ingest`).
    if name in _FLOW_NAMES:
        from flows.ingest import flow

        return getattr(flow, name)
    raise AttributeError(f"module 'flows.ingest' has no attribute {name!r}")
