"""stairs: turn big language models into small ones.

Each stage of the pipeline is a Prefect flow in its own module here (ingest, generate, curate,
train, quantize, staircase); their internals live in subpackages. State lives under STAIRS_HOME.
"""

__version__ = "0.1.0"
