"""The architecture, enforced: imports run one way (base <- train <- export <- bento <- loop <- cli), and a
package reaches another only through its face (`__init__` and `__all__`), never a `_module` or `_name` of it."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("knowacq", "export", "bento", "benchmarks")

LAYERS = ("knowacq.base", "knowacq.train", "export", "bento", "knowacq.loop", "knowacq.cli")
"""Lowest first: a module may import its own layer and the layers before it, never one after it."""

OWNER = {
    "knowacq.errors": "knowacq.base",  # public, but part of the bottom layer
    "knowacq": "knowacq.train",  # the user's face: re-exports base and train
    "knowacq.__main__": "knowacq.cli",
}


def unit_of(module: str) -> str | None:
    """The layer unit (one of LAYERS) owning a knowacq/export/bento module, or None for outsiders."""
    if module in OWNER:
        return OWNER[module]
    for unit in sorted(LAYERS, key=len, reverse=True):
        if module == unit or module.startswith(unit + "."):
            return unit
    return None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the module imported
    names: tuple[str, ...]  # names taken from it (from-imports)
    line: int


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import in a file, at any depth (inside functions too), plus `__import__`/`import_module` calls
    on a string literal."""
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(me, a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append(Import(me, base, tuple(a.name for a in node.names), node.lineno))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            if name in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                found.append(Import(me, node.args[0].value, (), node.lineno))
    return found


def violations(root: Path = ROOT) -> list[str]:
    """One line per import against the layer order or into another unit's private parts."""
    out = []
    for top in SOURCES:
        for path in sorted((root / top).rglob("*.py")):
            for imp in imports_of(path, root):
                out += _check(imp, f"{path.relative_to(root)}:{imp.line}")
    return out


def _check(imp: Import, where: str) -> list[str]:
    target_unit = unit_of(imp.target)
    if target_unit is None:
        return []
    mine = unit_of(imp.importer)  # None: outside the layers (benchmarks/), may use any face
    problems = []
    if mine is not None and LAYERS.index(target_unit) > LAYERS.index(mine):
        problems.append(f"{where}: {imp.importer} ({mine}) imports {imp.target} ({target_unit}), a higher layer")
    if mine != target_unit:
        private = [p for p in imp.target.split(".") if p.startswith("_") and p != "__main__"]
        if private:
            problems.append(f"{where}: {imp.importer} imports {imp.target}, a private module of {target_unit}")
        hidden = [n for n in imp.names if n.startswith("_")]
        if hidden:
            problems.append(f"{where}: {imp.importer} takes private {hidden} from {imp.target}")
    return problems


def test_imports_run_one_way_through_faces() -> None:
    found = violations()
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("export/_x.py", "from knowacq.loop import retrain\n", "a higher layer"),
        ("knowacq/base/_x.py", "def f():\n    from knowacq.train import fit\n", "a higher layer"),
        ("bento/_x.py", "from export._runtime import Predictor\n", "a private module of export"),
        ("bento/_x.py", "import export._runtime\n", "a private module of export"),
        ("knowacq/loop/_x.py", "from export import _hidden\n", "takes private"),
        ("bento/_x.py", "x = __import__('export._runtime')\n", "a private module of export"),
        ("knowacq/train/_x.py", "from knowacq.base._store import FeedbackStore\n", "a private module"),
        ("knowacq/train/_x.py", "from ..loop import select\n", "a higher layer"),
    ],
)
def test_a_deliberate_back_import_is_caught(tmp_path: Path, module: str, source: str, expected: str) -> None:
    for top in SOURCES:
        (tmp_path / top).mkdir()
    path = tmp_path / module
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("export/_x.py", "from knowacq.base import load_tsv\nfrom knowacq.train import fit\n"),
        ("export/_x.py", "from export._manifest import read_manifest\n"),  # its own private module
        ("knowacq/cli/_x.py", "from bento import Settings\nfrom knowacq.loop import retrain\n"),
        ("bento/_x.py", "from knowacq.errors import ModelError\n"),
    ],
)
def test_allowed_imports_pass(tmp_path: Path, module: str, source: str) -> None:
    for top in SOURCES:
        (tmp_path / top).mkdir()
    path = tmp_path / module
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    assert violations(tmp_path) == []
