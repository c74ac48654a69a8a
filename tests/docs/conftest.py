"""The docs tier: README.md's and docs/*.md's shell and Python blocks, run as a new user would.

The blocks run in one scratch copy of the checkout (its tracked files), with its own HOME,
from a shell that did what the README tells a reader to do first (`source .venv/bin/activate`,
with `.venv` the virtualenv running these tests). They share that copy in page order, so
`make demo`'s run (README) is made once and the pages after it read its `.clazzify/`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from docblocks import Scratch, clean_env, stop_servers

ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "docs: runs the shell and Python blocks of README.md and docs/")


def _tracked_files(root: Path) -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, text=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return [str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and not {".git", ".venv", ".clazzify", "__pycache__"} & set(p.parts)]
    return [line for line in out.splitlines() if line and (root / line).is_file()]


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scratch]:
    """A copy of the checkout in which the blocks run, so nothing they write lands in the repo."""
    root = tmp_path_factory.mktemp("docs") / "clazzify"
    for rel in _tracked_files(ROOT):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, root / rel)
    # `.venv` is the virtualenv these tests run in, as `make install` would have made it; the
    # copy's pyproject.toml is made older than it, so make never reinstalls into it.
    (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    os.utime(root / "pyproject.toml", (0, 0))
    home = root.parent / "home"
    home.mkdir()
    env = clean_env(dict(os.environ), home)
    env["CLAZZIFY_QUEUE"] = f"docs-test-{uuid.uuid4().hex[:8]}"
    env["CLAZZIFY_AMQP_URL"] = os.environ.get("CLAZZIFY_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")
    # The copy's own code first, whatever the virtualenv has installed (an editable install
    # may point at another checkout).
    prelude = f"source .venv/bin/activate\nexport PYTHONPATH={root / 'src'}"
    made = Scratch(root=root, env=env, prelude=prelude)
    yield made
    stop_servers(made)
