"""Pre-flight check (flows/preflight.py) for the generate template: it must load and render against a real
row of the curriculum's corpus, so a missing field or a broken template fails before any request.
"""

from __future__ import annotations

from flows.prompting.template import Template, TemplateError, load_template
from flows.spec import Curriculum


def prompts_dir_of(spec: Curriculum):
    d = spec.generate.prompts_dir
    return spec.resolve(d) if d is not None else None


def generate_template(spec: Curriculum) -> Template:
    """The template the curriculum's generate stage uses (raises TemplateError)."""
    return load_template(spec.generate.template, prompts_dir_of(spec))


def check_generate_template(spec: Curriculum) -> list[str]:
    d = spec.generate.prompts_dir
    if d is not None and not spec.resolve(d).is_dir():
        return [f"generate.prompts_dir: not a folder: {spec.resolve(d)}"]
    try:
        template = generate_template(spec)
    except TemplateError as e:
        return [f"generate.template: {e}"]
    if template.student is not None:
        try:
            load_template(template.student, prompts_dir_of(spec))
        except TemplateError as e:
            return [f"generate.template: its student template: {e}"]
        if spec.staircase.rounds > 1:
            # A promoted student teaches the next round with this template, but it was trained
            # on another one (its `student` template): it cannot write these replies.
            return [f"staircase.rounds: template '{template.name}' trains students on "
                    f"'{template.student}', so a promoted student cannot answer "
                    f"'{template.name}' requests in the next round; use rounds: 1"]
    asking = None  # the key that asks for rationalization, named in the error
    if spec.generate.rationalize:
        asking = "generate.rationalize"
    elif any(entry.rationalize for entry in spec.staircase.schedule or ()):
        asking = "staircase.schedule"
    if asking is not None:
        from flows.prompting.hints import RATIONALIZE_TEMPLATE

        try:
            load_template(RATIONALIZE_TEMPLATE, prompts_dir_of(spec))
        except TemplateError as e:
            return [f"{asking}: rationalize asks with template "
                    f"'{RATIONALIZE_TEMPLATE}': {e}"]
    if spec.corpus.path is not None and not spec.resolve(spec.corpus.path).exists():
        return []  # the missing corpus is reported by the corpus check; nothing to render
    from flows.prompting.samples import first_problem, sample_rows

    try:
        rows = sample_rows(spec, 1)
    except Exception as e:  # an unreadable corpus is ingest's error to name; say why we skipped
        return [f"generate.template: cannot read a corpus row to render against: "
                f"{type(e).__name__}: {e}"]
    if not rows:
        where = spec.resolve(spec.corpus.path) if spec.corpus.path is not None else "demo"
        return [f"corpus.path: no valid row in {where} ({first_problem(spec)}), so "
                f"template '{template.name}' cannot be tried on one"]
    missing = [f for f in template.needs if rows[0].get(f) in (None, "")]
    if missing:
        return [f"generate.template: template '{template.name}' needs "
                f"{', '.join(repr(f) for f in missing)}, which corpus rows "
                f"(format {spec.corpus.format}) do not have ({template.path})"]
    try:
        template.render(rows[0])
    except TemplateError as e:
        return [f"generate.template: {e}"]
    return []


def student_template(spec: Curriculum) -> Template:
    """The template students of this curriculum are trained and evaluated with: the generate
    template's `student` template when it names one (disentangle, textbook), else itself."""
    template = generate_template(spec)
    if template.student is None:
        return template
    return load_template(template.student, prompts_dir_of(spec))
