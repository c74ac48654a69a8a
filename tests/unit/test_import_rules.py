"""The package's import rule, held by a test (docs/architecture.md states it).

1. ``clazzify.core`` imports no other subpackage.
2. Each subpackage imports only the subpackages below it in :data:`ALLOWED`, so there are no
   cycles and the layering reads bottom-up: core, registry, then training / serving / scoring /
   rollout, then the command line.
3. Across subpackages only public names are imported: no ``_private`` module or name.
4. The package never imports an entry point (``components``, ``pipelines``, ``serving``,
   ``benchmarks``, ``tests``) nor ``kfp``: entry points import the package, never the reverse.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "clazzify"

#: subpackage -> the other subpackages it may import.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "registry": {"core"},
    "training": {"core", "registry"},
    "serving": {"core", "registry"},
    "scoring": {"core"},
    "rollout": {"core", "registry"},
    "review": {"core", "scoring"},
    "cli": {"core", "registry", "training", "serving", "scoring", "rollout", "review"},
}
ENTRY_POINTS = {"components", "pipelines", "serving", "benchmarks", "tests", "kfp"}


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) for every import in a file; ``names`` is empty for ``import x``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return out


def violations(root: Path) -> list[str]:
    """Every import under ``root`` (a ``clazzify`` package folder) that breaks the rule."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        own = rel.parts[0] if len(rel.parts) > 1 else None  # None: a top-level module
        for line, module, names in imports_of(path):
            where = f"{rel}:{line}"
            top = module.split(".")[0]
            if top in ENTRY_POINTS:
                found.append(f"{where}: the package imports the entry point {module!r}")
                continue
            if top != "clazzify":
                continue
            parts = module.split(".")
            if len(parts) == 1:  # `import clazzify` / `from clazzify import x`
                subs = [n for n in names if (root / n).is_dir()]
                if any(n not in ("__version__", "DEMO_CLASSES") for n in names if n not in subs):
                    found.append(f"{where}: import from a subpackage's module, not from 'clazzify'")
                targets = [(s, []) for s in subs]
            else:
                targets = [(parts[1], [*parts[2:], *names])]
            for sub, tail in targets:
                if own is None or sub == own:
                    continue
                if sub not in ALLOWED.get(own, set()):
                    found.append(f"{where}: '{own}' may not import '{sub}' ({module})")
                private = [t for t in tail if t.startswith("_")]
                if private:
                    found.append(f"{where}: '{own}' imports private {private} of '{sub}'")
    return found


def test_the_package_keeps_its_import_rule():
    assert violations(PACKAGE) == []


def test_every_subpackage_is_in_the_rule():
    subs = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subs <= set(ALLOWED)


@pytest.mark.parametrize(("file", "source", "expected"), [
    ("core/bad.py", "from clazzify.training.data import read_rows\n", "'core' may not import 'training'"),
    ("scoring/bad.py", "from clazzify.serving.protocol import unpack\n", "'scoring' may not import 'serving'"),
    ("training/bad.py", "from clazzify.core.storage import _split\n", "imports private ['_split']"),
    ("training/bad.py", "from clazzify.core import _impl\n", "imports private ['_impl']"),
    ("serving/bad.py", "import components.images\n", "imports the entry point 'components.images'"),
    ("rollout/bad.py", "from kfp import dsl\n", "imports the entry point 'kfp'"),
    ("registry/bad.py", "from clazzify import training\n", "'registry' may not import 'training'"),
])
def test_the_rule_catches_a_planted_bad_import(tmp_path: Path, file: str, source: str, expected: str):
    root = tmp_path / "clazzify"
    for sub in ALLOWED:
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / file).write_text(source)
    found = violations(root)
    assert len(found) == 1 and expected in found[0], found


def test_a_clean_tree_passes(tmp_path: Path):
    root = tmp_path / "clazzify"
    (root / "training").mkdir(parents=True)
    (root / "training" / "ok.py").write_text("from clazzify.core.storage import open_uri\nimport numpy\n")
    assert violations(root) == []
