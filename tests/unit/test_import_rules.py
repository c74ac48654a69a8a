"""The package's import rule, held by a test (docs/architecture.md states it).

1. ``clazzify.core`` imports no other subpackage.
2. Each subpackage imports only the subpackages below it in :data:`ALLOWED`, so there are no
   cycles and the layering reads bottom-up: core, registry, then training / serving / scoring /
   rollout, then the command line.
3. Across subpackages only public names are imported: no ``_private`` module or name.
4. The package never imports an entry point (``components``, ``pipelines``, ``serving``,
   ``benchmarks``, ``tests``) nor ``kfp``: entry points import the package, never the reverse.
5. No import cycle between the modules of one subpackage, counting every import but those
   under ``if TYPE_CHECKING:`` (one inside a function only defers the cycle).
"""

from __future__ import annotations

import ast
from functools import cache
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


@cache
def parsed(path: Path, mtime_ns: int) -> ast.Module:
    """A file's syntax tree, parsed once for both checks (keyed by mtime: planted files change)."""
    return ast.parse(path.read_text(), filename=str(path))


def parse(path: Path) -> ast.Module:
    return parsed(path, path.stat().st_mtime_ns)


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) for every import in a file; ``names`` is empty for ``import x``."""
    out = []
    for node in ast.walk(parse(path)):
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


def module_name(root: Path, path: Path) -> str:
    """``training/ingest.py`` -> ``clazzify.training.ingest`` (a package is its ``__init__``)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def cycle_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports that make a module depend on another: all of them, also those inside a
    function (deferring an import hides a cycle, it does not remove it: the ingest <-> lineage
    cycle was one), except those under ``if TYPE_CHECKING:``, which never run."""
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skipped]


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``from pkg import module`` counts as importing
    that module)."""
    modules = {module_name(root, p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in cycle_imports(parse(path)):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets |= {f"{base}.{a.name}" for a in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles_within_subpackages(root: Path) -> list[str]:
    """Every import cycle among the modules of one subpackage, as ``a -> b -> a`` (each once)."""
    graph = import_graph(root)
    found: set[tuple[str, ...]] = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt.rsplit(".", 1)[0] != start.rsplit(".", 1)[0]:
                continue  # a cycle across subpackages is rule 2's to catch
            if nxt == start:
                i = path.index(min(path))  # one rotation per cycle
                found.add(tuple(path[i:] + path[:i]))
            elif nxt not in path and nxt > start:  # each cycle is walked from its smallest module
                walk(start, nxt, [*path, nxt])

    for name in sorted(graph):
        walk(name, name, [name])
    return [" -> ".join([*c, c[0]]) for c in sorted(found)]


def test_the_package_keeps_its_import_rule():
    assert violations(PACKAGE) == []


def test_no_import_cycle_inside_a_subpackage():
    assert cycles_within_subpackages(PACKAGE) == []


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


@pytest.mark.parametrize(("files", "expected"), [
    ({"ingest.py": "from clazzify.training.lineage import DatasetLineage\n",
      "lineage.py": "import json\nfrom clazzify.training.ingest import read_split_manifest\n"},
     ["clazzify.training.ingest -> clazzify.training.lineage -> clazzify.training.ingest"]),
    ({"a.py": "from clazzify.training import b\n", "b.py": "from . import c\n",
      "c.py": "try:\n    from clazzify.training.a import x\nexcept ImportError:\n    pass\n"},
     ["clazzify.training.a -> clazzify.training.b -> clazzify.training.c -> clazzify.training.a"]),
    ({"ingest.py": "from clazzify.training.lineage import DatasetLineage\n",  # the cycle issue 19 found
      "lineage.py": "def f():\n    from clazzify.training.ingest import read_split_manifest\n"},
     ["clazzify.training.ingest -> clazzify.training.lineage -> clazzify.training.ingest"]),
])
def test_the_rule_catches_a_planted_cycle(tmp_path: Path, files: dict[str, str], expected: list[str]):
    root = tmp_path / "clazzify"
    (root / "training").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "training" / "__init__.py").write_text("")
    for name, source in files.items():
        (root / "training" / name).write_text(source)
    assert cycles_within_subpackages(root) == expected
    assert violations(root) == []  # rules 1-4 do not see it: only the cycle check does


def test_imports_that_never_run_and_other_subpackages_make_no_cycle(tmp_path: Path):
    root = tmp_path / "clazzify"
    (root / "training").mkdir(parents=True)
    (root / "core").mkdir(parents=True)
    (root / "training" / "a.py").write_text("from clazzify.training.b import y\nfrom clazzify.core import c\n")
    (root / "training" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from clazzify.training.a import x\n")
    (root / "core" / "c.py").write_text("from clazzify.training import a\n")  # rule 2's, not a subpackage cycle
    assert cycles_within_subpackages(root) == []
