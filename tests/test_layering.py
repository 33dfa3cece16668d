"""The import rules (floors) of ``src/e5studio``, checked on the source: every ``import`` and ``from ... import``
of every module, at module level and inside functions and classes, parsed with ``ast`` (nothing is imported).

Floors, lowest first; a module may import only its own package and the floors named for it:
``errors``, ``settings`` -> ``engine`` -> ``retrieval``; ``jobspec`` (pure Python job specs) -> ``control``
(store, keys, job records; no ML) -> ``serving``, ``web``, ``jobs`` (never each other; inside ``jobs``,
``jobs.batch_embed`` and ``jobs.train`` never import each other) -> the top: ``app`` (composition root),
``cli``, ``__main__``, which may import anything.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
ROOT = "e5studio"

LEAF: frozenset[str] = frozenset()
BASE = frozenset({"e5studio.errors", "e5studio.settings", "e5studio.vocabulary"})
SERVICE_FLOORS = BASE | {"e5studio.engine", "e5studio.retrieval", "e5studio.jobspec", "e5studio.control",
                         "e5studio.http_body"}
ANYTHING = None  # the top: no limit

# package (or top-level module) -> the packages it may import besides itself; ``e5studio`` itself (the package's
# __init__: the version string) imports nothing and may be imported by every module.
FLOORS: dict[str, frozenset[str] | None] = {
    "e5studio": LEAF,
    "e5studio.errors": LEAF,
    "e5studio.http_body": frozenset({"e5studio.errors"}),
    "e5studio.settings": frozenset({"e5studio.errors", "e5studio.vocabulary"}),
    "e5studio.vocabulary": frozenset({"e5studio.errors"}),
    "e5studio.engine": BASE,
    "e5studio.retrieval": BASE | {"e5studio.engine", "e5studio.jobspec"},
    "e5studio.jobspec": BASE,
    "e5studio.control": BASE | {"e5studio.jobspec"},
    "e5studio.serving": SERVICE_FLOORS,
    "e5studio.web": SERVICE_FLOORS,
    "e5studio.jobs": SERVICE_FLOORS,
    "e5studio.app": ANYTHING,
    "e5studio.cli": ANYTHING,
    "e5studio.__main__": ANYTHING,
}
# inside one package: these sub-packages never import each other (shared code goes one level up)
SIBLINGS_APART: list[frozenset[str]] = [frozenset({"e5studio.jobs.batch_embed", "e5studio.jobs.train"})]

# TEMPORARY: imports that today's jobs/control code still makes against the floors above; they belong to the
# job-spec branch (issue 11, jobspec half). The lead deletes each entry once that branch is merged; an entry
# that no longer occurs fails `test_temporary_allow_list_is_still_needed`, so none outlives its reason.
TEMPORARY_ALLOWED: frozenset[tuple[str, str]] = frozenset({
})


@dataclass(frozen=True)
class Violation:
    path: str  # relative to the repository
    line: int
    module: str  # the importing module
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.module} imports {self.imported}: {self.rule}"


def unit_of(module: str) -> str:
    """The floor a module belongs to: ``e5studio`` itself or its first-level package/module."""
    parts = module.split(".")
    return ".".join(parts[:2])


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def known_modules(src: Path = SRC) -> set[str]:
    return {module_name(p, src) for p in (src / ROOT).rglob("*.py")}


def imports_of(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, module of ours) for every import anywhere in ``tree``; ``from pkg import name`` counts as
    ``pkg.name`` where that is a module, else as ``pkg``."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                yield node.lineno, full if full in known else target


def rule_for(module: str, imported: str) -> str | None:
    """None if ``module`` may import ``imported``, else the rule it breaks (in words)."""
    if imported != ROOT and not imported.startswith(ROOT + "."):
        return None  # not ours
    unit, target = unit_of(module), unit_of(imported)
    if unit not in FLOORS:
        return f"rule 'every module has a floor': {unit} is in no floor of tests/test_layering.py FLOORS"
    if target not in FLOORS:
        return f"rule 'every module has a floor': {target} is in no floor of tests/test_layering.py FLOORS"
    allowed = FLOORS[unit]
    if unit == target or target == ROOT or allowed is ANYTHING:
        for group in SIBLINGS_APART:
            mine = [g for g in group if module == g or module.startswith(g + ".")]
            theirs = [g for g in group if imported == g or imported.startswith(g + ".")]
            if mine and theirs and mine != theirs:
                return (f"rule 'siblings apart': {mine[0]} and {theirs[0]} never import each other "
                        f"(shared code goes in {mine[0].rpartition('.')[0]} or a lower floor)")
        return None
    if target in allowed:
        return None
    if not allowed:
        return f"rule 'floor {unit}': {unit} may import nothing of ours"
    return f"rule 'floor {unit}': {unit} may import only itself and {', '.join(sorted(allowed))}"


def check_source(source: str, path: Path, src: Path = SRC, known: set[str] | None = None) -> list[Violation]:
    known = known_modules(src) if known is None else known
    module = module_name(path, src)
    tree = ast.parse(source, filename=str(path))
    found = []
    for line, imported in sorted(set(imports_of(tree, module, path.name == "__init__.py", known))):
        rule = rule_for(module, imported)
        if rule is not None:
            rel = path.relative_to(src.parent).as_posix() if path.is_relative_to(src.parent) else str(path)
            found.append(Violation(rel, line, module, imported, rule))
    return found


def all_violations() -> list[Violation]:
    known = known_modules()
    found: list[Violation] = []
    for path in sorted((SRC / ROOT).rglob("*.py")):
        found.extend(check_source(path.read_text(encoding="utf-8"), path, known=known))
    return found


def test_imports_follow_the_floors() -> None:
    broken = [v for v in all_violations() if (v.path, v.imported) not in TEMPORARY_ALLOWED]
    assert not broken, "imports against the layering rules:\n" + "\n".join(map(str, broken))


def test_temporary_allow_list_is_still_needed() -> None:
    seen = {(v.path, v.imported) for v in all_violations()}
    stale = sorted(TEMPORARY_ALLOWED - seen)
    assert not stale, f"delete these from TEMPORARY_ALLOWED in tests/test_layering.py (no longer imported): {stale}"


def test_every_package_of_ours_has_a_floor() -> None:
    units = {unit_of(m) for m in known_modules()}
    assert units <= FLOORS.keys(), f"packages without a floor: {sorted(units - FLOORS.keys())}"


# -- the checker itself finds what it must find ------------------------------------------------------------


@pytest.mark.parametrize(("where", "source", "imported", "rule"), [
    ("engine/embedder.py", "def f():\n    from e5studio.web import mount\n", "e5studio.web.mount",
     "rule 'floor e5studio.engine': e5studio.engine may import only itself and e5studio.errors, e5studio.settings"),
    ("serving/models.py", "import e5studio.web.common as c\n", "e5studio.web.common", "floor e5studio.serving"),
    ("web/pages.py", "from e5studio.serving.inference import read_json\n", "e5studio.serving.inference",
     "floor e5studio.web"),
    ("control/store.py", "from e5studio.engine import checkpoint\n", "e5studio.engine.checkpoint",
     "floor e5studio.control"),
    ("jobspec/train.py", "from e5studio.control.store import Store\n", "e5studio.control.store",
     "floor e5studio.jobspec"),
    ("errors.py", "from e5studio import settings\n", "e5studio.settings", "nothing of ours"),
    ("jobs/train/data.py", "from ..batch_embed import reader\n", "e5studio.jobs.batch_embed.reader",
     "rule 'siblings apart'"),
    ("engine/x.py", "class A:\n    def f(self):\n        from .. import app\n", "e5studio.app",
     "floor e5studio.engine"),
    ("serving/x.py", "from e5studio.newthing import y\n", "e5studio.newthing", "is in no floor"),
])
def test_the_checker_names_file_line_and_rule(where: str, source: str, imported: str, rule: str) -> None:
    known = known_modules() | {"e5studio.jobs.batch_embed.reader", "e5studio.engine.checkpoint", "e5studio.app",
                               "e5studio.web.mount", "e5studio.settings"}
    path = SRC / ROOT / where
    found = check_source(source, path, known=known)
    assert len(found) == 1, found
    message = str(found[0])
    line = source.count("\n", 0, source.index("import")) + 1
    assert message.startswith(f"src/e5studio/{where}:{line}: "), message
    assert imported in message and rule in message, message


@pytest.mark.parametrize(("where", "source"), [
    ("serving/x.py", "from e5studio.control.store import Store\nimport numpy\nfrom e5studio import __version__\n"),
    ("jobs/train/x.py", "from e5studio.jobs import files\nfrom e5studio.jobs.train import loss\nfrom . import y\n"),
    ("control/x.py", "from e5studio.jobspec import layout\n"),
    ("app.py", "from e5studio.web.mount import mount_ui\nfrom e5studio.serving.state import State\n"),
    ("retrieval/x.py", "from e5studio.engine.embedder import Embedder\n"),
])
def test_the_checker_allows_what_the_floors_allow(where: str, source: str) -> None:
    assert check_source(source, SRC / ROOT / where) == []
