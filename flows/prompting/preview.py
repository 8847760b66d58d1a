"""What `stairs prompts render` and `stairs prompts list` show: rendered prompts for real corpus
rows, and the templates available, without calling any teacher."""

from __future__ import annotations

from flows.prompting.check import prompts_dir_of
from flows.prompting.samples import sample_rows
from flows.prompting.template import list_templates, load_template
from flows.spec import Curriculum


def render_rows(spec: Curriculum, template: str | None = None, n: int = 3) -> dict:
    """Render `template` (default: the curriculum's generate.template) for the first n rows."""
    t = load_template(template or spec.generate.template, prompts_dir_of(spec))
    rendered = [{"row_id": row["id"], "line": row["line"], "messages": t.render(row)}
                for row in sample_rows(spec, n)]
    return {"template": t.name, "path": str(t.path), "content_hash": t.content_hash,
            "needs": t.needs, "output": t.output, "rows": rendered}


def describe_templates(prompts_dir=None) -> list[dict]:
    """Every template in the folder, loaded and checked; a broken one is listed with its error."""
    from flows.prompting.template import TemplateError

    out = []
    for name in list_templates(prompts_dir):
        try:
            t = load_template(name, prompts_dir)
        except TemplateError as e:
            out.append({"name": name, "error": str(e)})
            continue
        out.append({"name": t.name, "description": t.description, "needs": t.needs,
                    "output": t.output, "structured": t.json_schema is not None,
                    "path": str(t.path), "content_hash": t.content_hash, "error": None})
    return out
