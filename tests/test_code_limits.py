"""The house limits hold over the product code (tepo_agent/, tools/, trainer/): no function over
80 lines, no module over 500 lines. Read with ``ast`` from the source files, so a new long
function fails here, with its place and length, before review has to find it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tepo_agent", "tools", "trainer")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500

# (path, function name) -> why it may be longer for now. Keep this short; every entry must still
# be needed (the last test fails on a stale one).
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _sources() -> list[Path]:
    files = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(files) > 50, f"expected the product code under {ROOT}, found {len(files)} files"
    return files


def _long_functions(path: Path, root: Path = ROOT) -> list[tuple[str, str, int, int]]:
    """(relative path, function name, first line, length) of every function over the limit."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    rel = path.relative_to(root).as_posix()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            length = (node.end_lineno or node.lineno) - start + 1
            if length > MAX_FUNCTION_LINES:
                found.append((rel, node.name, start, length))
    return found


def test_no_function_is_longer_than_80_lines() -> None:
    too_long = [
        f"{rel}:{line} {name}() has {length} lines"
        for path in _sources()
        for rel, name, line, length in _long_functions(path)
        if (rel, name) not in EXCEPTIONS
    ]
    assert not too_long, (
        f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n"
        + "\n".join(too_long)
    )


def test_no_module_is_longer_than_500_lines() -> None:
    too_long = []
    for path in _sources():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT).as_posix()} has {lines} lines")
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them):\n" + "\n".join(
        too_long
    )


def test_every_exception_is_still_needed() -> None:
    long_now = {(rel, name) for path in _sources() for rel, name, _, _ in _long_functions(path)}
    stale = sorted(set(EXCEPTIONS) - long_now)
    assert not stale, f"remove these entries from EXCEPTIONS, the functions are short now: {stale}"


def test_the_check_sees_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    sample = tmp_path / "tepo_agent" / "long.py"
    sample.parent.mkdir()
    sample.write_text(f"@staticmethod\ndef long():\n{body}\n\n\ndef short():\n    return 1\n")
    expected = ("tepo_agent/long.py", "long", 1, MAX_FUNCTION_LINES + 2)  # decorator counted
    assert _long_functions(sample, tmp_path) == [expected]
