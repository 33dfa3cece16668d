"""``requires-python`` in pyproject.toml says what the code needs: every module parses with the minimum
version's grammar and imports on the interpreter running the suite (CI runs the minimum, Python 3.11)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "e5studio"


def _minimum() -> tuple[int, int]:
    spec = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["requires-python"]
    found = re.fullmatch(r">=\s*(\d+)\.(\d+)", spec.strip())
    assert found, f"requires-python should be a plain lower bound '>=X.Y', got {spec!r}"
    return int(found.group(1)), int(found.group(2))


SCRIPTS = {"e5studio.__main__", "e5studio.control.alembic.env"}  # run on import (the CLI, Alembic's hook)


def _modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return [name for name in names if name not in SCRIPTS]


def test_the_suite_runs_on_a_supported_python() -> None:
    assert sys.version_info[:2] >= _minimum(), f"Python {sys.version_info[:2]} is below requires-python"


def test_every_module_parses_with_the_minimum_grammar() -> None:
    minimum = _minimum()
    for path in sorted(PACKAGE.rglob("*.py")):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=minimum)


def test_every_module_imports() -> None:
    """Each module imported in a fresh interpreter (a name missing from the standard library of this Python, such
    as ``typing.Self`` before 3.11, fails here); modules of optional extras must import without them too."""
    modules = _modules()
    script = ("import importlib, sys\nfailed = []\nfor name in sys.argv[1:]:\n    try:\n"
              "        importlib.import_module(name)\n    except Exception as exc:\n"
              "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\nprint('\\n'.join(failed))\n"
              "sys.exit(1 if failed else 0)\n")
    done = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(modules) > 100
