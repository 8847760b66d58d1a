"""The bench workload through NVIDIA NeMo Data Designer: the requests are a seed DataFrame with one
`prompt` column, and an LLM text column renders `{{ prompt }}` for each row on a custom OpenAI
provider pointed at base_url, with max_parallel_requests = C (its per-model concurrency knob).
Each request is one user message, so --prompts files must hold single-message requests.

    /work/bench-venvs/data-designer/bin/python bench/peers/data_designer_runner.py \
        --base-url http://127.0.0.1:8911/v1 --n 2000 --concurrency 64
"""

from __future__ import annotations

import tempfile

from peer_common import Meter, parse_args, report, workload


def main() -> None:
    args = parse_args("data-designer")
    workdir = args.workdir or tempfile.mkdtemp(prefix="data-designer-bench-")
    from importlib.metadata import version

    import pandas as pd
    from data_designer.config.column_configs import LLMTextColumnConfig
    from data_designer.config.config_builder import DataDesignerConfigBuilder
    from data_designer.config.models import (
        ChatCompletionInferenceParams,
        ModelConfig,
        ModelProvider,
    )
    from data_designer.config.seed_source_dataframe import DataFrameSeedSource
    from data_designer.interface.data_designer import DataDesigner

    requests = workload(args)
    if any(len(m) != 1 or m[0]["role"] != "user" for m in requests):
        raise SystemExit("data_designer_runner: each request must be one user message")
    provider = ModelProvider(name="bench", endpoint=args.base_url, provider_type="openai",
                             api_key="unused")
    model = ModelConfig(alias="bench", model=args.model, provider="bench", skip_health_check=True,
                        inference_parameters=ChatCompletionInferenceParams(
                            max_tokens=args.max_tokens, max_parallel_requests=args.concurrency))
    builder = DataDesignerConfigBuilder(model_configs=[model])
    builder.with_seed_dataset(DataFrameSeedSource(df=pd.DataFrame(
        {"prompt": [m[0]["content"] for m in requests]})))
    builder.add_column(LLMTextColumnConfig(name="response", prompt="{{ prompt }}",
                                           model_alias="bench"))
    designer = DataDesigner(artifact_path=workdir, model_providers=[provider])
    with Meter() as meter:
        result = designer.create(builder, num_records=len(requests), dataset_name="bench")
    df = result.load_dataset()
    completed = int(df["response"].notna().sum()) if "response" in df else 0
    report("data-designer", version("data-designer"), args, meter, completed,
           args.n - completed, workdir=workdir)


if __name__ == "__main__":
    main()
