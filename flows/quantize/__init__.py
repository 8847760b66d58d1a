"""The quantize stage: make every configured small artifact of a round's student and measure each
(flow.py). absmax.py: int8 absmax and group-wise int4; gguf_export.py: GGUF export + llama.cpp
k-quants; imatrix.py: the importance matrix; gptq.py: GPTQ on a GPU; check.py: pre-flight.
Measurements go through flows/evaluate/ like every other score."""

_FLOW_NAMES = ('quantize', 'quantize_flow', 'plan_artifacts', 'find_student', 'calibration_ids', 'calibration_texts', 'student_imatrix', 'IMATRIX_IGNORED',)


def __getattr__(name):
    # The flow module imports Prefect; the stage's internals do not need it, so it is loaded only
    # when one of its names is asked for (`from flows.quantize import quantize`).
    if name in _FLOW_NAMES:
        from flows.quantize import flow

        return getattr(flow, name)
    raise AttributeError(f"module 'flows.quantize' has no attribute {name!r}")
