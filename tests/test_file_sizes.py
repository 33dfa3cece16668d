"""Small single-purpose modules (ARCHITECTURE.md, style rule 8): no source file of the package over 450 lines."""

from __future__ import annotations

from pathlib import Path

import e5studio

MAX_LINES = 450
PACKAGE = Path(e5studio.__file__).resolve().parent


def test_no_source_file_is_over_450_lines() -> None:
    sizes = {str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
             for path in PACKAGE.rglob("*.py")}
    assert len(sizes) > 50, sizes  # the package was found
    over = {name: lines for name, lines in sizes.items() if lines > MAX_LINES}
    assert not over, f"split these files (at most {MAX_LINES} lines each): {over}"
