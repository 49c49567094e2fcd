"""The pinned environment: `constraints.txt` from a resolved virtual environment, and the bentofiles' pins from it.

    python deploy/lock.py freeze VENV_PYTHON   # write constraints.txt from what that environment holds
    python deploy/lock.py sync                 # set every bentofile*.yaml pin to the version in constraints.txt
    python deploy/lock.py check                # exit 1, naming each, when a bentofile pin differs

`make lock` runs the first two on a scratch environment that pip resolved from pyproject.toml alone; `make install`
installs with `pip install -c constraints.txt`, so the tests, the demo and the bento run the same versions.
Standard library only: it runs before any environment exists.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
BENTOFILES = sorted(ROOT.glob("bentofile*.yaml"))
OWN = {"knowacq"}
"""The project itself: installed editable, never pinned."""
BY_HAND = {"onnxruntime-gpu": "1.23.2"}
"""Pins the CPU machine that makes the lock cannot resolve (the CUDA build of ONNX Runtime: bentofile.gpu.yaml)."""
HEADER = """\
# Every package of the development environment at one version: `pip install -c constraints.txt -e '.[cpu,dev]'`
# (what `make install` runs). Written by `make lock` (deploy/lock.py) from a scratch environment resolved from
# pyproject.toml; do not edit by hand. bentofile*.yaml take their pins from it (`python deploy/lock.py sync`).
# Local version labels (torch's +cpu) are dropped, so that the same pin takes the CPU or the CUDA build.
"""
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;#]+)")


def normalise(name: str) -> str:
    """PEP 503 name: `SQLAlchemy` and `sqlalchemy`, `prometheus_client` and `prometheus-client` are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path = LOCK) -> dict[str, str]:
    """Normalised name -> version of every pin in a constraints file."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[normalise(match.group(1))] = match.group(3)
    return pins


def bento_pins(path: Path) -> dict[str, str]:
    """Normalised name -> version of each `- "name==version"` package line of a bentofile (`?` when unpinned)."""
    pins: dict[str, str] = {}
    in_packages = False
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped == "packages:":
            in_packages = True
            continue
        if in_packages and stripped.startswith("- "):
            spec = stripped[2:].strip().strip("\"'")
            match = _PIN.match(spec)
            if match:
                pins[normalise(match.group(1))] = match.group(3)
            else:
                pins[normalise(re.split(r"[\[<>=!~ ]", spec, maxsplit=1)[0])] = "?"
        elif in_packages and stripped and not stripped.startswith("#"):
            in_packages = False
    return pins


def freeze(python: str) -> None:
    """Write constraints.txt from the packages installed in the environment of `python`."""
    out = subprocess.run(
        [python, "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    pins = {}
    for line in out.splitlines():
        match = _PIN.match(line.strip())
        if match and normalise(match.group(1)) not in OWN:
            pins[normalise(match.group(1))] = match.group(3).split("+")[0]
    pins.update(BY_HAND)
    LOCK.write_text(HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
    print(f"wrote {len(pins)} pins to {LOCK.name}")


def differences(lock_path: Path = LOCK, bentofiles: list[Path] = BENTOFILES) -> list[str]:
    """Each bentofile pin that is missing from, or differs from, constraints.txt."""
    lock = read_lock(lock_path)
    problems = []
    for path in bentofiles:
        for name, version in bento_pins(path).items():
            if name not in lock:
                problems.append(f"{path.name}: {name} is not in {lock_path.name}")
            elif version != lock[name]:
                problems.append(f"{path.name}: {name}=={version}, {lock_path.name} says {lock[name]}")
    return problems


def sync() -> None:
    """Rewrite every pinned bentofile package line with the version constraints.txt gives it."""
    lock = read_lock()
    for path in BENTOFILES:
        lines = path.read_text().splitlines(keepends=True)
        for i, line in enumerate(lines):
            match = re.match(r'^(\s*- ")([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^"]+)(".*)$', line.rstrip("\n"))
            if match and normalise(match.group(2)) in lock:
                version = lock[normalise(match.group(2))]
                lines[i] = f"{match.group(1)}{match.group(2)}{match.group(3) or ''}=={version}{match.group(5)}\n"
        path.write_text("".join(lines))
    print(f"synced {', '.join(p.name for p in BENTOFILES)} with {LOCK.name}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["freeze"] and len(argv) == 2:
        freeze(argv[1])
    elif argv == ["sync"]:
        sync()
    elif argv == ["check"]:
        problems = differences()
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
