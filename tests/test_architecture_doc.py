"""``docs/architecture.md`` is the one map of the code; what a test can check of it, it checks here.

The floors table must state exactly the rules ``tests/test_layering.py`` enforces (one row per package or group
of packages with the same rule), and every pair of sibling packages kept apart must be named there.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.test_layering import FLOORS, SIBLINGS_APART

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
ROOT = "e5studio"


def _section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    found = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert found, f"docs/architecture.md has no section '## {title}'"
    return found.group(1)


def _names(cell: str) -> list[str]:
    """The backticked package names of a table cell, as full module names."""
    return [ROOT if name == ROOT else f"{ROOT}.{name}" for name in re.findall(r"`([\w.]+)`", cell)]


def documented_floors() -> dict[str, frozenset[str] | None]:
    """The floors table: ``| packages | may import |``; 'anything' is no limit, 'nothing of ours' the empty set."""
    floors: dict[str, frozenset[str] | None] = {}
    for line in _section("Floors").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`"):
            continue
        packages, allowed = cells
        rule: frozenset[str] | None
        if allowed.lower().startswith("anything"):
            rule = None
        elif allowed.lower().startswith("nothing of ours"):
            rule = frozenset()
        else:
            rule = frozenset(_names(allowed.split("(")[0]))
        for package in _names(packages):
            assert package not in floors, f"{package} has two rows in the floors table"
            floors[package] = rule
    return floors


def test_the_floors_table_states_the_layering_rules() -> None:
    documented = documented_floors()
    assert documented == FLOORS, (
        "docs/architecture.md's floors table and tests/test_layering.py's FLOORS differ: "
        f"only in the doc {sorted(set(documented.items()) - set(FLOORS.items()), key=str)}, "
        f"only in the test {sorted(set(FLOORS.items()) - set(documented.items()), key=str)}")


def test_packages_kept_apart_are_named() -> None:
    section = _section("Floors")
    for group in SIBLINGS_APART:
        short = sorted(name.removeprefix(f"{ROOT}.") for name in group)
        line = next((ln for ln in section.splitlines() if all(f"`{s}`" in ln for s in short)), None)
        assert line is not None and "never import each other" in line, (
            f"the floors section should say that {' and '.join(short)} never import each other")
