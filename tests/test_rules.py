"""The project's rules, enforced in CI: ruff (with the per-layer import bans of liif/ruff.toml and
pipeline/geometry/ruff.toml) and mypy exit clean, no device is named in liif/ or pipeline/, the
pure geometry layer imports no heavy stack, and every package declares its public names."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("liif", "pipeline")
RUFF_PATHS = ("liif", "pipeline", "jobs", "tests", "bench")
MYPY_PATHS = ("liif", "pipeline/geometry", "pipeline/io", "pipeline/run")
GEOMETRY = ROOT / "pipeline" / "geometry"
GEOMETRY_BANNED = {"torch", "ray", "zarr", "rasterio"}
DEVICE_WORD = re.compile(r"\bcuda\b")


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed in this environment (pip install -e '.[dev]')")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _sources(*folders: str | Path) -> Iterator[Path]:
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_ruff_is_clean() -> None:
    r = _run("ruff", "check", "--output-format", "concise", *RUFF_PATHS)
    assert r.returncode == 0, f"ruff check {' '.join(RUFF_PATHS)} found:\n{r.stdout}{r.stderr}"


def test_mypy_is_clean() -> None:
    r = _run("mypy", *MYPY_PATHS)
    assert r.returncode == 0, f"mypy {' '.join(MYPY_PATHS)} found:\n{r.stdout}{r.stderr}"


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes of the module, classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def test_no_device_is_named_in_the_libraries() -> None:
    """Device choice goes through ``torch.accelerator`` (jobs/ and bench/ may name devices)."""
    bad = []
    for path in _sources(*LIBRARIES):
        tree = ast.parse(path.read_text(), filename=str(path))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docs and DEVICE_WORD.search(node.value)):
                bad.append(f"{_rel(path)}:{node.lineno}: string {node.value!r}")
            elif isinstance(node, ast.Attribute) and node.attr == "cuda":
                bad.append(f"{_rel(path)}:{node.lineno}: attribute .cuda")
    assert not bad, "name no device in liif/ or pipeline/ (use torch.accelerator):\n" + "\n".join(bad)


def test_geometry_imports_no_heavy_stack() -> None:
    """pipeline/geometry is pure: no torch, Ray, Zarr or rasterio, at module level or inside
    functions (liif.errors is reached through pipeline.errors, which is allowed)."""
    bad = []
    for path in _sources(GEOMETRY):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            bad += [f"{_rel(path)}:{node.lineno}: import {n}" for n in names
                    if n.split(".")[0] in GEOMETRY_BANNED]
    assert not bad, "pipeline/geometry must stay pure:\n" + "\n".join(bad)


def _bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds at top level (also under ``if TYPE_CHECKING:`` and ``try``)."""
    names: set[str] = set()
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.If | ast.Try):
            stack += node.body + node.orelse + getattr(node, "finalbody", [])
            for handler in getattr(node, "handlers", []):
                stack += handler.body
    return names


def _literal(tree: ast.Module, name: str) -> ast.expr | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name
                                                for t in node.targets):
            return node.value
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.target.id == name:
            return node.value
    return None


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_every_package_declares_its_public_names() -> None:
    """Each package of liif/ and pipeline/ lists ``__all__`` (a literal list of strings) in its
    ``__init__.py``; every listed name is bound there, or re-exported lazily through an
    ``_EXPORTS`` map whose target module defines it."""
    packages = sorted(p for lib in LIBRARIES for p in (ROOT / lib).rglob("__init__.py"))
    assert len(packages) >= 10, [_rel(p) for p in packages]
    bad = []
    for init in packages:
        tree = ast.parse(init.read_text(), filename=str(init))
        value = _literal(tree, "__all__")
        if value is None:
            bad.append(f"{_rel(init)}: no __all__")
            continue
        try:
            exported = ast.literal_eval(value)
        except ValueError:
            bad.append(f"{_rel(init)}:{value.lineno}: __all__ is not a literal list of names")
            continue
        if not (isinstance(exported, list | tuple) and all(isinstance(n, str) for n in exported)):
            bad.append(f"{_rel(init)}:{value.lineno}: __all__ is not a list of strings")
            continue
        lazy_node = _literal(tree, "_EXPORTS")
        lazy = ast.literal_eval(lazy_node) if lazy_node is not None else {}
        bound = _bound_names(tree)
        for name in exported:
            if name in lazy:
                target = _module_file(lazy[name])
                if target is None:
                    bad.append(f"{_rel(init)}: {name!r} maps to {lazy[name]!r}, not a module")
                elif name not in _bound_names(ast.parse(target.read_text())):
                    bad.append(f"{_rel(init)}: {name!r} is not defined in {_rel(target)}")
            elif name not in bound:
                bad.append(f"{_rel(init)}: {name!r} is in __all__ but not bound")
        bad += [f"{_rel(init)}: _EXPORTS name {n!r} is not in __all__"
                for n in lazy if n not in exported]
    assert not bad, "package __init__ files and their __all__:\n" + "\n".join(bad)
