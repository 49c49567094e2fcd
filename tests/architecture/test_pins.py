"""The pinned environment: constraints.txt is what runs, the bentofiles ship the same versions, and every
package the kit imports is one it declares."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import load_script

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("knowacq", "export", "bento")


lock = load_script(ROOT / "deploy" / "lock.py")


def declared() -> set[str]:
    """Normalised names of every requirement in pyproject.toml: dependencies and all extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        specs.extend(extra)
    return {lock.normalise(re.split(r"[\[<>=!~ ;]", spec, maxsplit=1)[0]) for spec in specs}


def runtime_declared() -> set[str]:
    """What installing the kit brings: dependencies, ONNX Runtime (cpu or gpu), the Postgres driver and Ray (the
    optional extras the kit imports inside the functions that need them), not dev."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    specs = [*project["dependencies"], *extras["cpu"], *extras["gpu"], *extras["postgres"], *extras["ray"]]
    return {lock.normalise(re.split(r"[\[<>=!~ ;]", spec, maxsplit=1)[0]) for spec in specs}


def undeclared_imports(roots: list[Path], allowed: set[str]) -> list[str]:
    """`file:line: module (distribution)` for each import of an installed third-party module whose
    distribution is not in `allowed`."""
    owners = md.packages_distributions()
    problems = []
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top in sys.stdlib_module_names or top in SOURCES:
                        continue
                    dists = {lock.normalise(d) for d in owners.get(top, [top])}
                    if not dists & allowed:
                        where = f"{path.relative_to(root.parent)}:{node.lineno}"
                        problems.append(f"{where}: {name} ({', '.join(sorted(dists))})")
    return problems


def test_every_package_the_kit_imports_is_declared_as_a_dependency() -> None:
    problems = undeclared_imports([ROOT / name for name in SOURCES], runtime_declared())
    assert not problems, "imported but not declared in pyproject.toml's dependencies:\n" + "\n".join(problems)


def test_an_import_of_a_dev_only_package_is_found(tmp_path: Path) -> None:
    source = tmp_path / "kit"
    source.mkdir()
    (source / "module.py").write_text("import numpy\n\ndef f():\n    from hypothesis import given\n")
    problems = undeclared_imports([source], runtime_declared())
    assert problems == ["kit/module.py:4: hypothesis (hypothesis)"]


def test_every_requirement_of_pyproject_is_locked() -> None:
    missing = declared() - set(lock.read_lock())
    assert not missing, f"in pyproject.toml but not pinned in constraints.txt: {sorted(missing)} (run make lock)"


def test_the_environment_runs_the_locked_versions() -> None:
    """What `make install` put here is what constraints.txt says (local labels such as torch's +cpu aside)."""
    wrong = []
    for name, version in lock.read_lock().items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            continue  # another extra's package (onnxruntime-gpu on a CPU machine)
        if installed.split("+")[0] != version:
            wrong.append(f"{name} {installed} (locked {version})")
    assert not wrong, "installed versions differ from constraints.txt: " + ", ".join(wrong)


def test_the_bentofiles_ship_the_locked_versions() -> None:
    assert lock.differences() == []
    for path in lock.BENTOFILES:
        pins = lock.bento_pins(path)
        assert "bentoml" in pins and "?" not in pins.values(), f"{path.name}: every package pinned exactly"


def test_a_bentofile_pin_that_drifts_from_the_lock_is_named(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# lock\nbentoml==1.4.40\nnumpy==2.4.6\n")
    bentofile = tmp_path / "bentofile.yaml"
    bentofile.write_text(
        'python:\n  packages:\n    - "bentoml==1.4.40"\n    - "numpy==2.4.5"\n    - "psycopg[binary]==3.3.9"\n'
        "docker:\n  distro: debian\n"
    )
    assert lock.differences(constraints, [bentofile]) == [
        "bentofile.yaml: numpy==2.4.5, constraints.txt says 2.4.6",
        "bentofile.yaml: psycopg is not in constraints.txt",
    ]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("SQLAlchemy", "sqlalchemy"),
        ("prometheus_client", "prometheus-client"),
        ("typing.Extensions", "typing-extensions"),
    ],
)
def test_names_are_compared_as_pip_compares_them(name: str, expected: str) -> None:
    assert lock.normalise(name) == expected
