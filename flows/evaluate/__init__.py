"""The evaluate stage and the one evaluation room: engines (llama.cpp for GGUF, torch for
transformers folders), scoring on held-out rows, and the `stairs eval` flow.

    from flows.evaluate import evaluate_model, held_out_rows
"""

_FLOW_NAMES = ("EvalError", "eval_flow", "eval_template", "evaluate_and_record", "evaluate_model",
               "held_out_rows", "record", "earlier_accuracy")


def __getattr__(name):
    # The flow module imports Prefect; the engines and scoring do not need it, so it is loaded
    # only when one of its names is asked for.
    if name in _FLOW_NAMES:
        from flows.evaluate import flow

        return getattr(flow, name)
    raise AttributeError(f"module 'flows.evaluate' has no attribute {name!r}")
