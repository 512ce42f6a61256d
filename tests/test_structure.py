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
              "training/choice.py", "training/frontier.py")


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
