"""The exception tree: every exception class quotagate defines lives in quotagate.errors, once,
and the tree its docstring draws is the tree the classes form."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from collections import Counter
from pathlib import Path

import quotagate
from quotagate import errors

PACKAGE = Path(quotagate.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _class_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]


def _defined_exceptions() -> dict[str, list[type[BaseException]]]:
    """Exception classes by the module that defines them, over every module that has a class."""
    found: dict[str, list[type[BaseException]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if not _class_names(path):
            continue
        module = importlib.import_module(_module_name(path))
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found.setdefault(module.__name__, []).append(value)
    return found


def test_every_exception_class_is_defined_in_the_errors_module() -> None:
    found = _defined_exceptions()
    elsewhere = {
        module: sorted(cls.__name__ for cls in classes)
        for module, classes in found.items()
        if module != "quotagate.errors"
    }
    assert elsewhere == {}
    assert len(found["quotagate.errors"]) >= 30


def test_no_two_classes_share_an_exception_class_name() -> None:
    counts = Counter(name for path in PACKAGE.rglob("*.py") for name in _class_names(path))
    exception_names = {
        cls.__name__ for classes in _defined_exceptions().values() for cls in classes
    }
    assert {name: counts[name] for name in exception_names if counts[name] > 1} == {}


_NODE = re.compile(r"^(?P<lead>[ │├└─]*?)(?P<name>[A-Z][A-Za-z]+)(?:\s{2,}|$)")


def _drawn_parents(doc: str) -> dict[str, str | None]:
    """Each class the docstring's tree draws, and the class it is drawn under."""
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in doc.splitlines():
        match = _NODE.match(line)
        if match is None or not (line.startswith("    ") and line.strip()):
            continue
        depth = (len(match.group("lead")) - 4) // 4
        name = match.group("name")
        del path[depth:]
        parents[name] = path[-1] if path else None
        path.append(name)
    return parents


def _public_exceptions() -> dict[str, type[BaseException]]:
    """The exception classes of quotagate.errors, by name."""
    return {
        name: value
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, BaseException)
        and value.__module__ == errors.__name__
    }


def test_the_docstring_draws_the_tree_the_classes_form() -> None:
    assert errors.__doc__ is not None
    drawn = _drawn_parents(errors.__doc__)
    actual = {name: cls.__bases__[0].__name__ for name, cls in _public_exceptions().items()}
    assert {name: drawn.get(name) for name in actual} == actual
    assert set(drawn) == set(actual) | {"Exception", "BaseException"}
