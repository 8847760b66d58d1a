"""The train stage: fine-tune the student on a round's curated rows (flow.py). Training examples
per objective (examples.py), losses (losses.py), the loop (trainer.py), cutting a smaller student
from a base (layers.py), the pre-flight check (check.py). Model references and loading live in
flows/models.py; evaluation in flows/evaluate/."""

_FLOW_NAMES = ('train', 'train_flow', 'TrainError', 'train_inputs', 'latest_curated_run',)


def __getattr__(name):
    # The flow module imports Prefect; the stage's internals do not need it, so it is loaded only
    # when one of its names is asked for (`from flows.train import train`).
    if name in _FLOW_NAMES:
        from flows.train import flow

        return getattr(flow, name)
    raise AttributeError(f"module 'flows.train' has no attribute {name!r}")
