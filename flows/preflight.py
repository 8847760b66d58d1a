"""Pre-flight checks: what `stairs validate`, the CLI and every flow run before any request or
training step, so a broken curriculum fails at once with 'key.path: why' lines.

`flows.spec.load` only parses (keys, types, values); the checks here look at the world: files and
folders the curriculum names, templates rendered against a real corpus row, models that must
resolve, API key variables, the llama.cpp build's quantization types. Each stage keeps its own
check beside its code (`flows/<stage>/check.py`); this module lists them, and nothing imports it
back, so loading a spec never imports a stage.
"""

from __future__ import annotations

from pathlib import Path

from flows.spec import Curriculum, SpecError, load


def problems(spec: Curriculum) -> list[str]:
    """Every problem the checks find, as 'key.path: why' strings (empty: ready to run)."""
    # Imported here: the checks import llama.cpp, templates and corpus readers, which `load`
    # (and the Prefect UI's form validation) should not pay for.
    from flows.curate.check import check_curation
    from flows.prompting.check import check_generate_template
    from flows.quantize.check import quantization_runs_here
    from flows.teachers.check import check_teacher
    from flows.train.check import check_student

    found = []
    if spec.corpus.path is not None and not spec.resolve(spec.corpus.path).exists():
        found.append(f"corpus.path: file not found: {spec.resolve(spec.corpus.path)}")
    for check in (check_generate_template, check_teacher, check_curation, check_student,
                  quantization_runs_here):
        found.extend(check(spec))
    return found


def require(spec: Curriculum) -> Curriculum:
    """The spec if every check passes; otherwise SpecError naming the file and each problem."""
    found = problems(spec)
    if found:
        raise SpecError(f"{spec.source or spec.name}: " + "; ".join(found))
    return spec


def load_checked(path: Path | str) -> Curriculum:
    """Parse a curriculum file, then run every pre-flight check (what a run needs)."""
    return require(load(path))
