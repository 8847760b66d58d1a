"""Export a run's rows as a Hugging Face dataset: `stairs export RUN [--stage curate] --to DIR`.

DIR gets the rows three ways: the `datasets` save_to_disk layout (`datasets.load_from_disk(DIR)`),
Parquet under DIR/data/ (`load_dataset("parquet", data_files=...)`, and what the Hub serves), and a
dataset card, DIR/README.md, naming the run, the template, the teacher, the curation settings and
the drop counts. `push_to_hub` uploads the card and the Parquet files to a dataset repository
with huggingface_hub (the token comes from an environment variable, never from the command line).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

# What each stage exports: the rows it kept (curate), all rows (generate), the corpus (ingest).
KINDS = {"curate": "kept", "generate": "generated", "ingest": "corpus"}


class ExportError(RuntimeError):
    """The export cannot run: says which run, stage or folder is at fault."""


def _stage(ws, run_id: str, stage: str, round_index: int | None):
    if stage not in KINDS:
        raise ExportError(f"--stage {stage!r}: choose one of {', '.join(KINDS)}")
    found = ws.latest_stage(stage, run_id=run_id, round_index=round_index)
    if found is None:
        where = f" round {round_index}" if round_index is not None else ""
        raise ExportError(f"run {run_id} has no completed {stage} stage{where}")
    return found


def card(run, stage_name: str, rows: int, params: dict, summary: dict, generate: dict) -> str:
    """README.md of the dataset: YAML header (configs for the Hub's viewer) and what made it."""
    spec = json.loads(run.spec_json) if run.spec_json else {}
    header = {"configs": [{"config_name": "default",
                           "data_files": [{"split": "train", "path": "data/*.parquet"}]}],
              "tags": ["stairs", "distillation", "synthetic"]}
    teacher = spec.get("teacher", {})
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
             f"# {spec.get('name', run.curriculum)}: {stage_name} rows of run {run.id}", "",
             f"{rows} rows exported by `stairs export` from the `{stage_name}` stage "
             f"(shard kind `{KINDS[stage_name]}`).", "",
             "## How they were made", "",
             f"- curriculum: `{run.curriculum}`",
             f"- template: `{generate.get('template')}` (sha256 "
             f"`{generate.get('template_hash')}`)",
             f"- teacher: `{generate.get('teacher') or teacher.get('model')}` (backend "
             f"`{teacher.get('backend')}`, temperature {teacher.get('temperature')}, "
             f"{teacher.get('samples')} sample(s) per row)"]
    g = spec.get("generate", {})
    if g.get("verify"):
        lines.append(f"- verification: each teacher-written question re-answered "
                     f"{g['verify']['samples']} times with `{g['verify']['template']}`; kept "
                     "when the majority agrees")
    if g.get("judge"):
        lines.append(f"- judge: `{g['judge']['template']}`, rows under "
                     f"{spec.get('curation', {}).get('min_judge_score')} dropped")
    if stage_name == "curate":
        lines += ["", "## Curation settings", "", "```yaml",
                  yaml.safe_dump(params.get("curation", {}), sort_keys=True).strip(), "```", "",
                  "## Rows dropped, by reason", "", "| reason | rows |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in summary.get("drops_by_reason", {}).items()]
        lines += ["", f"Generated: {summary.get('generated')}, kept: {summary.get('kept')}, "
                  f"dropped: {summary.get('dropped')}."]
    return "\n".join(lines) + "\n"


def export_run(ws, run_id: str, to: Path, *, stage: str = "curate",
               round_index: int | None = None) -> dict:
    """Write DIR (save_to_disk + data/*.parquet + README.md); returns what was written."""
    import datasets
    import pyarrow.parquet as pq

    from storage.tables import Run

    run = ws.catalog.get(Run, run_id)
    if run is None:
        raise ExportError(f"no run {run_id!r} (see `stairs runs`)")
    st = _stage(ws, run_id, stage, round_index)
    shards = ws.shards(st, KINDS[stage])
    table = ws.store.table(shards) if shards else None
    if table is None or table.num_rows == 0:
        raise ExportError(f"run {run_id}: the {stage} stage has no {KINDS[stage]} rows to export")
    to = Path(to)
    if to.exists() and any(to.iterdir()):
        raise ExportError(f"{to}: not empty; export into a new folder")
    ds = datasets.Dataset(table)
    ds.save_to_disk(str(to))
    (to / "data").mkdir()
    parquet = to / "data" / "train-00000-of-00001.parquet"
    pq.write_table(table, parquet)
    gen = ws.latest_stage("generate", run_id=run_id, round_index=st.round_index)
    gen_params = json.loads(gen.params_json) if gen is not None and gen.params_json else {}
    for column in ("template", "template_hash", "teacher"):  # the rows say it when params don't
        if not gen_params.get(column) and column in table.column_names:
            values = sorted({v for v in table.column(column).to_pylist() if v})
            gen_params[column] = ", ".join(values) or None
    text = card(run, stage, table.num_rows, json.loads(st.params_json or "{}"), ws.summary(st),
                gen_params)
    (to / "README.md").write_text(text, encoding="utf-8")
    return {"run_id": run_id, "stage": stage, "kind": KINDS[stage], "rows": table.num_rows,
            "folder": str(to), "parquet": str(parquet), "card": str(to / "README.md")}


def push_to_hub(folder: Path, repo_id: str, *, token_env: str = "HF_TOKEN",
                private: bool = False) -> str:
    """Upload the card and the Parquet files of an exported folder to a Hub dataset repo."""
    from huggingface_hub import HfApi

    token = os.environ.get(token_env)
    if not token:
        raise ExportError(f"--push-to-hub: the environment variable {token_env} is not set "
                          "(a Hugging Face token with write access)")
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                             allow_patterns=["README.md", "data/*.parquet"],
                             commit_message="stairs export")
    return getattr(info, "commit_url", None) or f"https://huggingface.co/datasets/{repo_id}"
