"""Functions stay short: none over 80 lines outside tests, unless a `# long: <reason>` line sits above it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("knowacq", "export", "bento", "benchmarks")
MAX_LINES = 80
REASON = "# long:"


def long_functions(root: Path = ROOT, limit: int = MAX_LINES) -> list[str]:
    """`path:line name (N lines)` for every function longer than `limit` lines with no reason above it.

    The length runs from the `def` line (decorators excluded) to the function's last line. The reason is a
    comment line starting with `# long:` directly above the `def` or its decorators."""
    out = []
    for top in SOURCES:
        for path in sorted((root / top).rglob("*.py")):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines), str(path))):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                above = lines[first - 2].strip() if first >= 2 else ""
                if length > limit and not above.startswith(REASON):
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_no_function_over_80_lines_without_a_reason() -> None:
    found = long_functions()
    assert not found, "\n".join(found)


def test_a_long_function_is_caught_and_a_reason_lets_it_stay(tmp_path: Path) -> None:
    for top in SOURCES:
        (tmp_path / top).mkdir()
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))  # def line + 80 = 81 lines
    (tmp_path / "export" / "_long.py").write_text(f"def too_long():\n{body}\n\ndef short():\n    return 1\n")
    assert long_functions(tmp_path) == ["export/_long.py:1 too_long (81 lines)"]
    (tmp_path / "export" / "_long.py").write_text(f"# long: one table of cases, clearer whole\ndef too_long():\n{body}")
    assert long_functions(tmp_path) == []
    (tmp_path / "export" / "_long.py").write_text(f"def exactly():\n{body[: -len('    x79 = 79') - 1]}")
    assert long_functions(tmp_path) == []  # 80 lines is within the limit
