"""The folder tree is the pipeline: one package per stage, shared libraries beside them, and the
import graph says so. Walked with `ast`, so nothing is imported to check it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "generate", "curate", "train", "quantize", "evaluate")


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / "flows").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, str | None, bool]]:
    """(module imported, name taken from it or None, at module level?) for every import."""
    tree = ast.parse(path.read_text())
    # Imports run at import time unless they sit inside a function body.
    top = set()
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        top.add(id(node))
        stack += list(ast.iter_child_nodes(node))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in known:  # `from package import submodule`
                    out.append((sub, None, id(node) in top))
                elif a.name in lazy_names(node.module, known):  # a stage package's flow name
                    out.append((f"{node.module}.flow", a.name, id(node) in top))
                else:
                    out.append((node.module, a.name, id(node) in top))
    return out


def lazy_names(package: str, known: dict[str, Path]) -> set[str]:
    """Names a stage package hands out from its flow module on first use (its `_FLOW_NAMES`):
    an import of one of them is an import of `<package>.flow`."""
    path = known.get(package)
    if path is None or path.name != "__init__.py":
        return set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "_FLOW_NAMES" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return set()


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "flows" and parts[1] in STAGES else None


def test_every_stage_is_a_package_with_a_flow_module():
    for stage in STAGES:
        assert (ROOT / "flows" / stage / "flow.py").is_file(), stage
        assert (ROOT / "flows" / stage / "__init__.py").is_file(), stage
    # No stage module or internals folder under another name is left behind.
    for old in ("corpus", "generating", "curation", "student", "quant"):
        assert not (ROOT / "flows" / old).exists(), old
    for old in ("ingest", "generate", "curate", "train", "quantize", "evaluate", "checks"):
        assert not (ROOT / "flows" / f"{old}.py").exists(), old


def test_no_stage_imports_another_stages_private_names():
    known = modules()
    offenders = []
    for module, path in known.items():
        for target, name, _ in imports(path, known):
            if not target.startswith("flows."):
                continue
            private = (name or target.rsplit(".", 1)[-1]).startswith("_") and name != "__version__"
            if private and stage_of(target) != stage_of(module):
                offenders.append(f"{module} imports {target}:{name}")
    assert offenders == []


def test_module_level_imports_have_no_cycle():
    known = modules()
    graph = {m: sorted({t for t, _, top in imports(p, known) if top and t in known and t != m})
             for m, p in known.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, path):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_loading_a_spec_imports_no_stage():
    """flows.spec parses; the pre-flight checks (which import stages) live in flows.preflight,
    which nothing under flows.spec imports."""
    known = modules()
    seen, todo = set(), ["flows.spec"]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        todo += [t for t, _, _ in imports(known[m], known) if t in known]
    assert not [m for m in seen if stage_of(m) or m == "flows.preflight"]


def test_one_home_for_model_references():
    """Only flows/models.py turns a reference into a path: nobody else defines a resolver."""
    definers = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in (
                    "resolve_model", "register_base", "register_base_model", "hf_folder"):
                definers.append(f"{module}.{node.name}")
    assert sorted(definers) == ["flows.models.hf_folder", "flows.models.register_base",
                                "flows.models.resolve_model"]
