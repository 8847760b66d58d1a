"""Prompt templates (prompts/*.yaml): load, check, render with sandboxed Jinja, parse replies.

    from flows.prompting import load_template
    t = load_template("rationale")
    messages = t.render(row)          # [{"role": ..., "content": ...}]
    items = t.parse(reply_text, finish_reason)
"""

from flows.prompting.parsers import PARSERS, item
from flows.prompting.template import (
    Template,
    TemplateError,
    default_prompts_dir,
    list_templates,
    load_template,
    template_path,
    zero_shot,
)

__all__ = ["PARSERS", "Template", "TemplateError", "default_prompts_dir", "item",
           "list_templates", "load_template", "template_path", "zero_shot"]
