"""Prompt templates: one YAML file per template in prompts/, rendered with sandboxed Jinja.

A template file declares what it is for, which row fields it needs, how the teacher's reply is
parsed, an optional JSON schema for structured output, and the chat messages (each a Jinja
template). Everything is checked when the file is loaded (unknown keys, Jinja syntax, variables
that are not declared, unknown parsers), so a broken template fails at `stairs validate` and not
after a thousand paid requests.

Users edit these files all day and curricula may come from anyone, so templates run in Jinja's
immutable sandbox: no attribute starting with '_', no mutation, nothing that reaches Python
internals; and rendering is bounded in time and size (bounds.py). StrictUndefined turns a typo
into an error instead of an empty string in the prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import jinja2
import yaml
from jinja2 import meta as jinja_meta
from jinja2.sandbox import SecurityError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flows.prompting import bounds
from flows.prompting.parsers import PARSERS
from flows.settings import PROJECT_ROOT

TEMPLATE_SUFFIX = ".yaml"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class TemplateError(ValueError):
    """A template that cannot load or render; the message names the file (and row, field)."""


def default_prompts_dir() -> Path:
    return PROJECT_ROOT / "prompts"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MessageSpec(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str = Field(min_length=1, description="Jinja template of the message text.")


class TemplateFile(_Strict):
    """The YAML document of one template file."""

    description: str = Field(min_length=1, description="What the template is for.")
    needs: list[str] = Field(description="Row fields the template uses; a row without one fails.")
    optional: list[str] = Field(default_factory=list,
                                description="Row fields used when present (None otherwise).")
    output: str = Field(description="Parser for the teacher's reply: " + ", ".join(PARSERS))
    json_schema: dict[str, Any] | None = Field(
        None, description="JSON schema for backends with structured output.")
    messages: list[MessageSpec] = Field(min_length=1)
    student: str | None = Field(
        None, description="Template the student is trained and evaluated with, rendered over "
        "each generated row (its passage and its question), when the request itself is not "
        "the student's prompt: a disentangle request asks for questions, the student answers "
        "one of them.")

    @field_validator("output")
    @classmethod
    def _known_parser(cls, v: str) -> str:
        if v not in PARSERS:
            raise ValueError(f"unknown parser {v!r}; known: {', '.join(sorted(PARSERS))}")
        return v

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, v: list[MessageSpec]) -> list[MessageSpec]:
        if v[-1].role != "user":
            raise ValueError("the last message must have role 'user' (the teacher answers it)")
        return v


def _environment() -> bounds.BoundedEnvironment:
    env = bounds.BoundedEnvironment(
        undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True,
        lstrip_blocks=True, keep_trailing_newline=False)
    # Prompts need no helper objects; these three are the usual first step of template-injection
    # payloads (`cycler.__init__.__globals__`). Without them such a name is an undeclared
    # variable, refused when the file loads. range, dict and namespace stay (sandbox-limited).
    for name in ("cycler", "joiner", "lipsum"):
        env.globals.pop(name, None)
    return env


_ENV = _environment()


class Template:
    """A loaded, checked template. `render(row)` -> chat messages; `parse(text)` -> items."""

    def __init__(self, name: str, path: Path, source: bytes, spec: TemplateFile):
        self.name = name
        self.path = path
        self.content_hash = hashlib.sha256(source).hexdigest()
        self.source = source.decode("utf-8")  # the file's text: the catalog keeps each version
        self.description = spec.description
        self.needs = list(spec.needs)
        self.optional = list(spec.optional)
        self.output = spec.output
        self.json_schema = spec.json_schema
        self._spec = spec
        self.student = spec.student
        self._messages: list[tuple[str, jinja2.Template]] = []
        declared = set(self.needs) | set(self.optional)
        for i, m in enumerate(spec.messages):
            where = f"{path}: messages[{i}] ({m.role})"
            try:
                ast = _ENV.parse(m.content)
            except jinja2.TemplateSyntaxError as e:
                raise TemplateError(f"{where}: Jinja syntax error on line {e.lineno}: "
                                    f"{e.message}") from None
            except (RecursionError, MemoryError) as e:  # a pathological nesting of brackets
                raise TemplateError(f"{where}: cannot be parsed: {type(e).__name__}") from None
            undeclared = jinja_meta.find_undeclared_variables(ast) - declared
            if undeclared:
                raise TemplateError(
                    f"{where}: uses {', '.join(sorted(undeclared))} which "
                    f"{'is' if len(undeclared) == 1 else 'are'} not in 'needs' or 'optional'")
            self._messages.append((m.role, _ENV.from_string(m.content)))

    def __reduce__(self):
        # Compiled Jinja templates do not pickle: a generate batch shipped to a Dask or Ray
        # worker rebuilds the template from the same file text.
        return (Template, (self.name, self.path, self.source.encode("utf-8"), self._spec))

    def __repr__(self) -> str:
        return f"Template({self.name!r}, output={self.output!r}, needs={self.needs})"

    def context(self, row: dict) -> dict:
        """The Jinja variables for one row: its declared fields, `meta` decoded from JSON."""
        row_id = row.get("id", "?")
        ctx: dict[str, Any] = {}
        for field in self.needs:
            value = row.get(field)
            if value is None or (isinstance(value, str) and not value.strip()):
                state = "missing" if field not in row else "empty"
                raise TemplateError(f"{self.path}: row {row_id}: field '{field}' is {state} "
                                    f"(template '{self.name}' needs it)")
            ctx[field] = value
        for field in self.optional:
            ctx[field] = row.get(field)
        if isinstance(ctx.get("meta"), str):
            try:
                ctx["meta"] = json.loads(ctx["meta"])
            except json.JSONDecodeError:
                raise TemplateError(f"{self.path}: row {row_id}: field 'meta' is not valid "
                                    "JSON") from None
        return ctx

    def render(self, row: dict, *, few_shot: bool = True) -> list[dict]:
        """The chat messages for one row. few_shot=False drops the template's worked examples
        (see `zero_shot`): how trained students are taught, evaluated and asked as teachers."""
        ctx = self.context(row)
        row_id = row.get("id", "?")
        messages = []
        for i, (role, tmpl) in enumerate(self._messages):
            where = f"{self.path}: row {row_id}: messages[{i}] ({role})"
            try:
                text = bounds.render(tmpl, ctx)
            except bounds.RenderLimit as e:
                raise TemplateError(f"{where}: {e}") from None
            except (MemoryError, RecursionError) as e:
                raise TemplateError(f"{where}: {type(e).__name__} while rendering") from None
            except SecurityError as e:
                raise TemplateError(f"{where}: refused by the sandbox: {e}") from None
            except jinja2.UndefinedError as e:
                raise TemplateError(f"{where}: undefined: {e.message}") from None
            except jinja2.TemplateError as e:
                raise TemplateError(f"{where}: {type(e).__name__}: {e}") from None
            except (TypeError, ValueError, ArithmeticError, LookupError) as e:
                # Jinja expressions can still fail on the row's values (e.g. int("x")).
                raise TemplateError(f"{where}: {type(e).__name__}: {e}") from None
            messages.append({"role": role, "content": text.strip()})
        return messages if few_shot else zero_shot(messages)

    def parse(self, text: str | None, finish_reason: str | None = None) -> list[dict]:
        """Items parsed from a teacher reply; bad replies become items with a named error."""
        return PARSERS[self.output](text, finish_reason)


def template_path(name: str, prompts_dir: Path | str | None = None) -> Path:
    if not NAME.match(name):
        raise TemplateError(f"bad template name {name!r}: use letters, digits, '_', '-', '.'")
    root = Path(prompts_dir) if prompts_dir is not None else default_prompts_dir()
    return root / f"{name}{TEMPLATE_SUFFIX}"


def load_template(name: str, prompts_dir: Path | str | None = None) -> Template:
    """Load and check prompts/<name>.yaml (or <prompts_dir>/<name>.yaml)."""
    path = template_path(name, prompts_dir)
    try:
        source = path.read_bytes()
    except FileNotFoundError:
        known = ", ".join(list_templates(prompts_dir)) or "none"
        raise TemplateError(f"{path}: no template '{name}' (known: {known})") from None
    except OSError as e:
        raise TemplateError(f"{path}: cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(source.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise TemplateError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise TemplateError(f"{path}: expected a mapping with description, needs, output, "
                            "messages")
    try:
        spec = TemplateFile.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"{loc}: {msg}")
        raise TemplateError(f"{path}: " + "; ".join(problems)) from None
    return Template(name, path.resolve(), source, spec)


def list_templates(prompts_dir: Path | str | None = None) -> list[str]:
    root = Path(prompts_dir) if prompts_dir is not None else default_prompts_dir()
    if not root.is_dir():
        return []
    return sorted(p.stem for p in root.glob(f"*{TEMPLATE_SUFFIX}") if NAME.match(p.stem))


def zero_shot(messages: list[dict]) -> list[dict]:
    """System messages plus the final user turn: the worked examples (user/assistant pairs before
    it) are dropped. A weak base teacher needs those examples; a student is trained without them,
    so its prompts stay short (training and decoding cost grows with every prompt token) and it
    later answers the same short prompt when it serves as the next round's teacher."""
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        return list(messages)
    return [m for i, m in enumerate(messages) if m["role"] == "system" or i == last_user]
