"""Which code a recipe's key covers: derived from the source, never listed by hand.

A recipe's compute reaches package modules in two ways: by the names it uses (``finetune``,
``gf.stitch``, ``localize``: imported into the recipe's module) and by what it asks of whatever
resolves it (``lab.splits``, ``lab.classifier``, ``lab.applied``: the data path, whose code is
:mod:`skillgraft.workbench`). :func:`covered` reads the recipe's class (its methods, those of its
base classes, and the module-level helpers they call) with :mod:`ast`, maps each name to the module
it comes from, and closes the set over the package's imports (also read with :mod:`ast`). What a
recipe asks of the resolver that is not data (``lab.delta``, ``lab.mask``, ``lab.store``) is the
value of another recipe, covered by that recipe's own key.

Left out, as unable to change a value: progress reporting, atomic file writing and this module
(:data:`NOT_VALUES`), and the package's ``__init__`` (its version is in every key already).
"""
from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from functools import lru_cache
from pathlib import Path

__all__ = ["NOT_VALUES", "PACKAGE", "RESOLVER", "RESOLVER_DATA", "covered", "imports", "closure"]

PACKAGE = Path(__file__).resolve().parent
NOT_VALUES = frozenset({"progress", "files", "codekeys"})
RESOLVER = ("lab", "Lab")   # what resolves a recipe, and what a recipe's compute may ask (``lab.…``)
RESOLVER_DATA = "workbench"  # the data path: the module that answers ``lab.splits``, ``lab.classifier``, …


def _module_file(name: str, root: Path = PACKAGE) -> Path | None:
    path = root / f"{name}.py"
    return path if path.is_file() else None


def _guarded(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: imports for annotations only, never run."""
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _walk(tree: ast.AST):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        todo += [c for c in ast.iter_child_nodes(node) if not _guarded(c)]


def _package_imports(tree: ast.AST, root: Path) -> dict[str, str]:
    """The names a module binds to package modules or to members of them: name → module."""
    names = {}
    for node in _walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        relative = node.level == 1
        absolute = node.level == 0 and (node.module or "").split(".")[0] == PACKAGE.name
        if not (relative or absolute):
            continue
        parts = (node.module or "").split(".")[0 if relative else 1:]
        source = parts[0] if parts and parts[0] else None
        for alias in node.names:
            bound = alias.asname or alias.name
            if source is None:  # from . import x: x is a module (or a name of __init__)
                if _module_file(alias.name, root):
                    names[bound] = alias.name
            elif _module_file(source, root):
                names[bound] = source
    return names


@lru_cache(maxsize=None)
def imports(module: str, root: str = str(PACKAGE)) -> frozenset[str]:
    """The package modules ``module`` imports (at any depth of its source, not for type checking only)."""
    path = _module_file(module, Path(root))
    if path is None:
        return frozenset()
    return frozenset(_package_imports(ast.parse(path.read_text()), Path(root)).values())


def closure(modules, root: str = str(PACKAGE)) -> tuple[str, ...]:
    """``modules`` and every package module they import, directly or not, less :data:`NOT_VALUES`."""
    seen, todo = set(), [m for m in modules if m not in NOT_VALUES]
    while todo:
        m = todo.pop()
        if m in seen or m in NOT_VALUES or _module_file(m, Path(root)) is None:
            continue
        seen.add(m)
        todo += sorted(imports(m, root))
    return tuple(sorted(seen))


@lru_cache(maxsize=None)
def _resolver() -> dict[str, frozenset[str]]:
    """What each member of the resolver (:class:`skillgraft.lab.Lab`) brings into a computation that
    asks for it: the package modules its body and its return annotation name (``lab.splits``: the
    data path, :data:`RESOLVER_DATA`; ``lab.mask``: the Mask it returns). ``lab.delta`` brings
    nothing: it resolves another recipe, whose value is keyed by that recipe."""
    module, name = RESOLVER
    tree = ast.parse(_module_file(module).read_text())
    table = _package_imports(tree, PACKAGE)
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    out = {}
    for node in klass.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = [n for stmt in node.body for n in ast.walk(stmt)]
            named = [n for n in ast.walk(node.returns) if isinstance(n, ast.Name)] if node.returns is not None else []
            out[node.name] = frozenset(table[n.id] for n in body + named if isinstance(n, ast.Name) and n.id in table)
    return out


def _used(nodes, helpers: dict[str, ast.AST], table: dict[str, str], seen: set[str]) -> set[str]:
    """Modules named by ``nodes``: imported names, what they ask of the resolver, helpers followed."""
    out, resolver = set(), _resolver()
    for tree in nodes:
        for node in _walk(tree):
            if isinstance(node, ast.Name):
                if node.id in table:
                    out.add(table[node.id])
                elif node.id in helpers and node.id not in seen:
                    seen.add(node.id)
                    out |= _used([helpers[node.id]], helpers, table, seen)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "lab" and node.attr in resolver:
                out |= resolver[node.attr]
    return out


@lru_cache(maxsize=None)
def covered(cls: type) -> tuple[str, ...]:
    """The package modules whose source ``cls``'s compute runs (its own module included)."""
    module = sys.modules[cls.__module__]
    file = Path(inspect.getsourcefile(module)).resolve()
    tree = ast.parse(file.read_text())
    table = _package_imports(tree, PACKAGE)
    helpers = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    own = file.stem if file.parent == PACKAGE else None
    bodies = []
    for klass in cls.__mro__:
        if klass is object or klass.__module__ != cls.__module__:
            continue
        bodies.append(ast.parse(textwrap.dedent(inspect.getsource(klass))))
    used = _used(bodies, helpers, table, {c.__name__ for c in cls.__mro__})
    return tuple(sorted(set(closure(used)) | ({own} if own else set())))  # its own module by its source only
