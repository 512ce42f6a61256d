"""The code's shape, as docs/architecture.md promises it: short functions, and training that names no model."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import cifarctl
from cifarctl.models import list_models
from cifarctl.models.registry import families

SRC = Path(cifarctl.__file__).parent
# The loop, what it is built from, the budget and the chooser: model-specific needs reach them through hooks,
# recipes and the registry, never by name.
MODEL_FREE = ("training/trainer.py", "training/build.py", "training/step.py", "training/budget.py",
              "training/plan.py", "training/tta_choice.py", "training/choice.py", "training/frontier.py",
              "groups/group.py", "groups/seed.py", "groups/jobs.py", "groups/plan.py")


def body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from a function's first statement to its last, its docstring left out."""
    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0  # type: ignore[operator]


def test_no_function_body_is_over_60_lines() -> None:
    long = [f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({body_lines(node)} lines)"
            for path in sorted(SRC.rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and body_lines(node) > 60]
    assert long == []


def code_words(tree: ast.Module) -> list[tuple[int, str]]:
    """Every name, attribute, imported module and string in ``tree``'s code: its docstrings (usage examples) left out."""
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    words = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            words.append((node.lineno, node.attr))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            words += [(node.lineno, getattr(node, "module", None) or "")] + [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.append((node.lineno, node.value))
    return words


def test_training_names_no_model() -> None:
    names = set(list_models()) | set(families()) | {"whiten"}
    pattern = re.compile("|".join(sorted(map(re.escape, names), key=len, reverse=True)))
    found = [f"{module}:{line}: {word!r}" for module in MODEL_FREE
             for line, word in code_words(ast.parse((SRC / module).read_text(encoding="utf-8")))
             if pattern.search(word)]
    assert found == []


def imports_of(path: Path) -> set[str]:
    """The cifarctl modules ``path`` imports, anywhere in it (inside functions and ``TYPE_CHECKING`` too): a module of
    a package for ``from package import module``, else the package itself."""
    module = ".".join(("cifarctl", *path.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([package.rsplit(".", node.level - 1)[0]] + ([base] if base else []))
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names}
    return {name for name in found if name in MODULES and name != module}


MODULES = {".".join(("cifarctl", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__")
           for p in SRC.rglob("*.py")}


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import each other round (Tarjan's strongly connected components of two or more)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_the_circle_finder_finds_circles() -> None:
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_module_imports_itself_round_a_circle() -> None:
    graph = {".".join(("cifarctl", *p.relative_to(SRC).with_suffix("").parts)).removesuffix(".__init__"): imports_of(p)
             for p in SRC.rglob("*.py")}
    assert graph["cifarctl.groups.group"] >= {"cifarctl.groups.seed", "cifarctl.training.api"}  # the reader reads
    assert import_circles(graph) == []


def test_no_module_is_over_400_lines() -> None:
    long = [f"{p.relative_to(SRC)} ({n} lines)" for p in sorted(SRC.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400]
    assert long == []
