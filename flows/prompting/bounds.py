"""Bounds on rendering a template: time and size.

The sandbox (template.py) keeps templates away from Python internals, but not from work:
`{{ "x" * 10**10 }}` asks for 10 GB (the kernel may kill the process before Python sees a
MemoryError), and three nested loops over range(100000) never end. Templates may come from
anyone, so rendering is bounded:

- size: no message longer than MAX_CHARS characters; no single step that would make one
  (repeating a string or list, '%' or format() widths, a filter's size arguments or its
  result), checked before the step where it can be, after it otherwise;
- time: no message takes longer than SECONDS, checked on every line the compiled template
  runs (a trace on template frames only, so the rest of the process is not slowed).

A template past a bound fails with RenderLimit, which the caller names with its file and row.
"""

from __future__ import annotations

import functools
import re
import sys
import time

from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_CHARS = 1_000_000  # per message: far beyond any prompt a model takes
SECONDS = 2.0  # per message: a prompt renders in well under a millisecond
TEMPLATE_FILE = "<template>"  # co_filename of code Jinja compiles from a string
_WIDE = re.compile(r"\d{7,}")  # a width or precision of a million and more in a format string


class RenderLimit(Exception):
    """A template went past a rendering bound."""


def _size(value) -> int | None:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else None


def _check_result(value, what: str):
    if (_size(value) or 0) > MAX_CHARS:
        raise RenderLimit(f"{what} makes {_size(value)} items, over {MAX_CHARS:,}")
    return value


def _check_args(args, kwargs, what: str) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_CHARS:
            raise RenderLimit(f"{what} with {value}, over {MAX_CHARS:,}")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, with the size bounds on operators, filters and calls. Intercepted
    operators are also never folded into constants when a template is compiled, so a template
    file cannot blow up while it loads either."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **options):
        super().__init__(**options)
        self.filters = {name: _bounded(name, f) for name, f in self.filters.items()}

    def call_binop(self, context, operator, left, right):
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if _size(seq) is not None and isinstance(n, int) and len(seq) * n > MAX_CHARS:
                    raise RenderLimit(f"repeating {len(seq)} items {n} times is over "
                                      f"{MAX_CHARS:,}")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) \
                and abs(left) > 1 and right * max(1, abs(left).bit_length()) > 64 * 1024:
            raise RenderLimit(f"{left} ** {right} is too large a number")
        if operator == "%" and isinstance(left, str) and _WIDE.search(left):
            raise RenderLimit(f"'%' formatting with a width over {MAX_CHARS:,}")
        return _check_result(super().call_binop(context, operator, left, right), operator)

    # Jinja's own parameter names: a template's keyword arguments cannot clash with them.
    def call(__self, __context, __obj, *args, **kwargs):
        name = getattr(__obj, "__name__", "call")
        _check_args(args, kwargs, name)
        return _check_result(super().call(__context, __obj, *args, **kwargs), name)

    def wrap_str_format(self, value):  # "...".format and format_map, when they are looked up
        if getattr(value, "__name__", "") in ("format", "format_map") \
                and isinstance(getattr(value, "__self__", None), str) \
                and _WIDE.search(value.__self__):
            raise RenderLimit(f"format() with a width over {MAX_CHARS:,}")
        return super().wrap_str_format(value)


def _bounded(name: str, f):
    @functools.wraps(f)  # keeps Jinja's pass_context/pass_environment marks
    def bounded(*args, **kwargs):
        if name == "format" and args and _WIDE.search(str(args[0])):  # '%' formatting again
            raise RenderLimit(f"filter format with a width over {MAX_CHARS:,}")
        _check_args(args[1:], kwargs, f"filter {name}")
        return _check_result(f(*args, **kwargs), f"filter {name}")

    return bounded


def render(template, context: dict) -> str:
    """Render within MAX_CHARS and SECONDS; RenderLimit otherwise."""
    deadline = time.monotonic() + SECONDS

    def on_line(frame, event, arg):
        if time.monotonic() > deadline:
            raise RenderLimit(f"rendering took over {SECONDS:g} s")
        return on_line

    def on_call(frame, event, arg):  # trace template code only
        return on_line if frame.f_code.co_filename == TEMPLATE_FILE else None

    previous = sys.gettrace()
    sys.settrace(on_call)
    try:
        pieces, size = [], 0
        for piece in template.generate(context):
            size += len(piece)
            if size > MAX_CHARS:
                raise RenderLimit(f"the message is over {MAX_CHARS:,} characters")
            pieces.append(piece)
        return "".join(pieces)
    finally:
        sys.settrace(previous)
