"""Size limits that keep the code readable: no hand-written source file over 500 lines, no
function over 80 lines (generated gRPC stubs excepted)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80


def sources() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / p for p in tracked.split()
            if p.endswith((".py", ".sh")) and "_pb2" not in p and (ROOT / p).is_file()]


def test_no_source_file_is_over_500_lines() -> None:
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in sources()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not long, "split these by job:\n" + "\n".join(long)


def test_no_function_is_over_80_lines() -> None:
    long = []
    for path in sources():
        if path.suffix != ".py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not long, "split these into named steps:\n" + "\n".join(long)
