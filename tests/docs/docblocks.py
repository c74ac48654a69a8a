"""The docs' shell and Python blocks, collected and run as the tests of the page they sit in.

Every fenced block whose language is a shell (``bash``, ``sh``, ``shell``, ``console``) or
``python`` in README.md and docs/*.md is either run, in document order, in a scratch copy of
the checkout, or carries a marker on the line right above its fence saying why it is not::

    <!-- docs-test: run -->                                   (the default; may be omitted)
    <!-- docs-test: run with DIR=demo name=by-hand -->        (DIR, a placeholder word, set)
    <!-- docs-test: run after=by-hand -->                     (run after the block named by-hand)
    <!-- docs-test: run except="^make test": runs the suite itself -->  (those commands left out)
    <!-- docs-test: cluster-only: kubectl against a live cluster -->   (a skip kind and its reason)

A skipped block is still checked: shell with ``bash -n``, Python with ``compile()``. A fence
with no language whose first line looks like a command is an error too, so no command hides
from the collector by dropping its language.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SHELL = frozenset({"bash", "sh", "shell", "console", "zsh"})
PYTHON = frozenset({"python", "py", "python3"})

#: Why a block may not run in CI, each with what it waits for.
SKIP_KINDS = {
    "cluster-only": "a Kubernetes cluster, KFP backend, registry or Docker daemon",
    "needs-a-running-server": "a server started by another block, or a deployment's host",
    "starts-a-server": "it serves until stopped",
    "runs-the-test-suite": "it is the test suite this test is part of",
    "needs-network": "downloads from the package index or elsewhere",
    "needs-other-tools": "programs that are no project dependency",
    "placeholders": "values only the reader has (hosts, buckets, keys)",
    "too-slow": "a run other blocks or tests already make, at more CPU than the docs tier allows",
}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<body>.*?)\s*-->\s*$")
#: A head of words and "quoted strings" free of colons, then ': reason'.
HEAD_REASON = re.compile(r'^(?P<head>(?:[^:"]|"[^"]*")*)(?::\s*(?P<reason>.*))?$')
COMMAND_WORDS = ("make ", "clazzify", "python", "kubectl", "curl ", "pip ", "mlflow ", "$ ", "docker ")


class DocsError(Exception):
    """A page's block or marker the collector cannot accept (says where and why)."""


@dataclass(frozen=True)
class Directive:
    """What a marker says: ``kind`` is ``run`` or one of :data:`SKIP_KINDS`."""

    kind: str = "run"
    reason: str = ""
    name: str = ""
    after: str = ""
    except_: str = ""
    subs: dict[str, str] = field(default_factory=dict)
    timeout: int = 300
    background: bool = False  # a server: started, waited for (ready=URL), stopped after its page
    ready: str = ""
    expect: str = ""  # a regular expression the block's output must match


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its code (fence indent removed)."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    directive: Directive

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.directive.kind == "run"


def parse_directive(body: str, where: str) -> Directive:
    """Read a marker's text (after ``docs-test:``).

    Raises:
        DocsError: an unknown kind or option, or a skip without its reason.
    """
    m = HEAD_REASON.match(body)
    if not m:
        raise DocsError(f"{where}: cannot read marker {body!r}")
    words = shlex.split(m["head"])
    reason = (m["reason"] or "").strip()
    if not words:
        raise DocsError(f"{where}: empty marker: write 'run' or one of {', '.join(SKIP_KINDS)}")
    kind, rest = words[0], words[1:]
    if kind in SKIP_KINDS:
        if rest or not reason:
            raise DocsError(f"{where}: '{kind}' takes only a reason: <!-- docs-test: {kind}: why -->")
        return Directive(kind=kind, reason=reason)
    if kind != "run":
        raise DocsError(f"{where}: unknown marker kind {kind!r}: use 'run' or one of {', '.join(SKIP_KINDS)}")
    opts: dict[str, object] = {"subs": {}}
    for word in rest:
        if word == "with":  # reads well before placeholders: run with DIR=demo
            continue
        if word == "background":
            opts["background"] = True
            continue
        key, sep, value = word.partition("=")
        if not sep:
            raise DocsError(f"{where}: marker option {word!r} is not key=value")
        if key.isupper():
            opts["subs"][key] = value  # type: ignore[index]
        elif key in ("name", "after"):
            opts[key] = value
        elif key == "except":
            re.compile(value)
            opts["except_"] = value
        elif key == "timeout":
            opts["timeout"] = int(value)
        elif key in ("ready", "expect"):
            if key == "expect":
                re.compile(value)
            opts[key] = value
        else:
            raise DocsError(f"{where}: unknown marker option {key!r} (name, after, except, timeout, "
                            "background, ready, expect, with PLACEHOLDER=value)")
    if opts.get("except_") and not reason:
        raise DocsError(f"{where}: 'except=' needs a reason: <!-- docs-test: run except=RE: why -->")
    if opts.get("background") and not opts.get("ready"):
        raise DocsError(f'{where}: a background block needs ready="URL" to wait for')
    return Directive(kind="run", reason=reason, **opts)  # type: ignore[arg-type]


def collect(page: Path) -> list[Block]:
    """Every shell and Python block of ``page``, in document order.

    Raises:
        DocsError: a bad marker, a marker on no fence, an unclosed fence, or a fence without
            a language whose first line is a command.
    """
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    pending: tuple[int, Directive] | None = None
    i = 0
    while i < len(lines):
        where = f"{page.name}:{i + 1}"
        marker = MARKER.match(lines[i])
        if marker:
            pending = (i + 1, parse_directive(marker["body"], where))
            i += 1
            continue
        fence = FENCE.match(lines[i])
        if not fence:
            if pending and lines[i].strip():
                raise DocsError(f"{page.name}:{pending[0]}: a docs-test marker must sit on the line "
                                "right above a fence")
            i += 1
            continue
        indent, mark, lang = fence["indent"], fence["fence"], fence["info"].strip().split(" ")[0].lower()
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(mark) and lines[j].strip().strip(mark[0]) == ""):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j == len(lines):
            raise DocsError(f"{where}: fence never closed")
        code = "\n".join(body) + "\n"
        directive = pending[1] if pending else Directive()
        if lang in SHELL or lang in PYTHON:
            blocks.append(Block(page, i + 1, lang, code, directive))
        elif pending:
            raise DocsError(f"{where}: a docs-test marker on a {lang or 'plain'} block, which never runs")
        elif not lang:
            first = next((s.strip() for s in body if s.strip()), "")
            if first.startswith(COMMAND_WORDS):
                raise DocsError(f"{where}: a fence without a language holds a command ({first[:40]!r}): "
                                "mark it ```bash (or ```python) so it is tested")
        pending = None
        i = j + 1
    if pending:
        raise DocsError(f"{page.name}:{pending[0]}: a docs-test marker on no fence")
    return order(blocks)


def order(blocks: list[Block]) -> list[Block]:
    """Document order, except that a block with ``after=NAME`` runs right after block NAME."""
    names = {b.directive.name for b in blocks if b.directive.name}
    for b in blocks:
        if b.directive.after and b.directive.after not in names:
            raise DocsError(f"{b.where}: after={b.directive.after} names no block of this page")
    ordered = [b for b in blocks if not b.directive.after]
    waiting = [b for b in blocks if b.directive.after]
    while waiting:
        for b in list(waiting):
            at = next((k for k, o in enumerate(ordered) if o.directive.name == b.directive.after), None)
            if at is not None:
                ordered.insert(at + 1, b)
                waiting.remove(b)
                break
        else:
            raise DocsError(f"{waiting[0].where}: after= chain has a cycle")
    return ordered


def script_of(block: Block) -> str:
    """The code to run: placeholders substituted, ``except=`` commands commented out.

    ``except=`` works on whole commands: a line and its backslash continuations.
    """
    code = block.code
    for word, value in block.directive.subs.items():
        code = re.sub(rf"\b{re.escape(word)}\b", value, code)
    if not block.directive.except_ or block.lang in PYTHON:
        return code
    skip = re.compile(block.directive.except_)
    out, lines, k = [], code.splitlines(), 0
    while k < len(lines):
        command = [lines[k]]
        while command[-1].rstrip().endswith("\\") and k + 1 < len(lines):
            k += 1
            command.append(lines[k])
        if skip.search(command[0].strip()):
            out += [f"# docs-test except: {c}" for c in command]
        else:
            out += command
        k += 1
    return "\n".join(out) + "\n"


def check_syntax(block: Block) -> None:
    """Compile a block without running it.

    Raises:
        AssertionError: a shell syntax error (``bash -n``) or a Python SyntaxError.
    """
    if block.lang in PYTHON:
        try:
            compile(block.code, block.where, "exec")
        except SyntaxError as e:
            raise AssertionError(f"{block.where}: Python block does not compile: {e}") from e
        return
    result = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{block.where}: shell syntax error: {result.stderr.strip()}"


@dataclass
class Scratch:
    """Where blocks run: ``root`` a copy of the checkout, with its environment, and the
    servers background blocks started (page name, process)."""

    root: Path
    env: dict[str, str]
    prelude: str = ""
    servers: list[tuple[str, subprocess.Popen]] = field(default_factory=list)


def stop_servers(scratch: Scratch, keep_page: str | None = None) -> None:
    """Stop every background block's process group, except those of ``keep_page``."""
    for page, proc in list(scratch.servers):
        if page == keep_page:
            continue
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        scratch.servers.remove((page, proc))


def _start_server(block: Block, scratch: Scratch, argv: list[str]) -> None:
    log = scratch.root.parent / f"{block.page.stem}-{block.line}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=scratch.root, env=scratch.env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    scratch.servers.append((block.page.name, proc))
    deadline = time.monotonic() + block.directive.timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            raise AssertionError(f"{block.where}: the server exited with code {proc.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(block.directive.ready, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(1)
    raise AssertionError(f"{block.where}: {block.directive.ready} not ready after {block.directive.timeout} s")


def run_block(block: Block, scratch: Scratch) -> subprocess.CompletedProcess[str]:
    """Run one block in ``scratch.root``.

    Raises:
        AssertionError: a non-zero exit, with the page, line, script and output's tail.
    """
    check_syntax(block)
    code = script_of(block)
    if block.lang in PYTHON:
        runner = f"{scratch.prelude}\npython - <<'DOCS_TEST_PY'\n{code}DOCS_TEST_PY\n"
        argv = ["bash", "-c", runner]
    else:
        argv = ["bash", "-c", f"{scratch.prelude}\nset -euo pipefail\n{code}"]
    if block.directive.background:
        _start_server(block, scratch, argv)
        return subprocess.CompletedProcess(argv, 0, "", "")
    try:
        result = subprocess.run(argv, cwd=scratch.root, env=scratch.env, capture_output=True, text=True,
                                timeout=block.directive.timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{block.where}: still running after {block.directive.timeout} s:\n{code}") from e
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise AssertionError(
            f"{block.where}: exit code {result.returncode}\n--- block\n{textwrap.indent(code, '  ')}"
            f"--- last lines of its output\n{tail}"
        )
    if block.directive.expect and not re.search(block.directive.expect, result.stdout):
        raise AssertionError(f"{block.where}: output does not match {block.directive.expect!r}:\n"
                             f"{result.stdout[-3000:]}")
    return result


def pages(root: Path) -> list[Path]:
    """README.md first (where a reader starts), then docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def clean_env(base: dict[str, str], home: Path) -> dict[str, str]:
    """A new user's environment: no virtualenv active, no clazzify/MLflow settings carried in."""
    env = {k: v for k, v in base.items()
           if not k.startswith(("CLAZZIFY_", "MLFLOW_", "VIRTUAL_ENV", "PYTHONPATH", "KFP_", "AWS_"))}
    venv_bins = {str(Path(p)) for p in env.get("PATH", "").split(os.pathsep) if (Path(p) / "activate").exists()}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p not in venv_bins)
    env.update(HOME=str(home), TF_CPP_MIN_LOG_LEVEL="2", PYTHONDONTWRITEBYTECODE="1",
               MPLCONFIGDIR=str(home / ".matplotlib"))
    return env
