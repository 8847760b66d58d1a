"""Trying a curriculum's generate + curate on a few corpus rows before a run: `stairs preview`
and `stairs prompts compare` (trial.py, compare.py), and the `preview` deployment (flow.py)."""
