"""The docs collector turns a rotted page red: planted broken blocks and markers in scratch
pages, each reported with its page and line."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
from docblocks import DocsError, Scratch, check_syntax, clean_env, collect, run_block, script_of, stop_servers

pytestmark = pytest.mark.docs


def _page(tmp_path: Path, text: str) -> Path:
    page = tmp_path / "page.md"
    page.write_text(text)
    return page


def _scratch(tmp_path: Path) -> Scratch:
    env = clean_env(dict(os.environ), tmp_path / "home")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])
    src = Path(__file__).resolve().parents[2] / "src"
    return Scratch(root=tmp_path, env=env, prelude=f"export PYTHONPATH={src}")


def test_a_block_that_fails_is_reported_with_its_page_line_and_output(tmp_path: Path):
    page = _page(tmp_path, "# Page\n\nList it:\n\n```bash\nls docs/renamed-page.md\n```\n")
    [block] = collect(page)
    with pytest.raises(AssertionError, match=r"page\.md:5: exit code 2(.|\n)*renamed-page\.md"):
        run_block(block, _scratch(tmp_path))


def test_a_python_block_that_raises_is_reported(tmp_path: Path):
    page = _page(tmp_path, "```python\nfrom clazzify.core.errors import NoSuchError\n```\n")
    [block] = collect(page)
    with pytest.raises(AssertionError, match=r"page\.md:1: exit code 1(.|\n)*ImportError"):
        run_block(block, _scratch(tmp_path))


@pytest.mark.slow
def test_a_renamed_cli_option_in_a_page_turns_it_red(tmp_path: Path):
    """What rot looks like: the page still says --per-klass after the option changed."""
    page = _page(tmp_path, "<!-- docs-test: run with DIR=demo -->\n```bash\n"
                           "python -m clazzify.cli demo-data DIR --per-klass 3\n```\n")
    [block] = collect(page)
    assert "demo-data demo --per-klass" in script_of(block)
    with pytest.raises(AssertionError, match=r"page\.md:2: exit code 2(.|\n)*No such option '--per-klass'"):
        run_block(block, _scratch(tmp_path))
    good = _page(tmp_path, "<!-- docs-test: run with DIR=demo -->\n```bash\n"
                           "python -m clazzify.cli demo-data DIR --per-class 2 --size 32\n```\n")
    run_block(collect(good)[0], _scratch(tmp_path))
    assert (tmp_path / "demo").is_dir()


def test_a_skipped_block_is_still_compiled(tmp_path: Path):
    page = _page(tmp_path, "<!-- docs-test: needs-a-running-server: the gRPC port -->\n```python\n"
                           "async with client:\n    pass\n```\n"
                           "<!-- docs-test: cluster-only: kubectl -->\n```bash\nkubectl get pods |\n```\n")
    python_block, shell_block = collect(page)
    assert not python_block.runs and not shell_block.runs
    with pytest.raises(AssertionError, match=r"page\.md:2: Python block does not compile"):
        check_syntax(python_block)
    with pytest.raises(AssertionError, match=r"page\.md:7: shell syntax error"):
        check_syntax(shell_block)


@pytest.mark.parametrize(("text", "message"), [
    ("<!-- docs-test: cluster-only -->\n```bash\nkubectl get pods\n```\n", "takes only a reason"),
    ("<!-- docs-test: skip: why -->\n```bash\nls\n```\n", "unknown marker kind 'skip'"),
    ("<!-- docs-test: run colour=red -->\n```bash\nls\n```\n", "unknown marker option 'colour'"),
    ("<!-- docs-test: run except=^make: -->\n```bash\nmake x\n```\n", "needs a reason"),
    ("<!-- docs-test: run -->\n\nSome prose.\n```bash\nls\n```\n", "right above a fence"),
    ("<!-- docs-test: run -->\n```sql\nSELECT 1;\n```\n", "never runs"),
    ("```\nclazzify images --restaurant r1\n```\n", "fence without a language holds a command"),
    ("```bash\nls\n", "never closed"),
    ("<!-- docs-test: run after=nowhere -->\n```bash\nls\n```\n", "names no block"),
    ("<!-- docs-test: run background -->\n```bash\nmake serve\n```\n", "needs ready="),
])
def test_a_bad_marker_or_hidden_command_is_an_error(tmp_path: Path, text: str, message: str):
    with pytest.raises(DocsError, match=message):
        collect(_page(tmp_path, text))


def test_except_leaves_out_whole_commands_and_after_reorders(tmp_path: Path):
    page = _page(tmp_path, (
        "<!-- docs-test: run after=first except=\"^make test|submit\": the suite; a cluster -->\n"
        "```bash\nmake demo\nmake test  # all\npython -m pipelines.train submit --host H \\\n"
        "    --set source=s3://b/\necho done\n```\n\n"
        "  <!-- docs-test: run name=first -->\n  ```sh\n  echo first\n  ```\n"))
    first, second = collect(page)
    assert first.code == "echo first\n" and first.line == 11
    script = script_of(second)
    assert "make demo\n" in script and "echo done" in script
    assert "# docs-test except: make test  # all" in script
    assert "# docs-test except:     --set source=s3://b/" in script


def test_a_background_server_serves_the_next_blocks_and_expect_checks_output(tmp_path: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "hello.txt").write_text("hello from the page\n")
    page = _page(tmp_path, (
        f'<!-- docs-test: run background ready="http://127.0.0.1:{port}/hello.txt" timeout=60 -->\n'
        f"```bash\npython -m http.server {port} --bind 127.0.0.1\n```\n\n"
        f"<!-- docs-test: run expect='hello from' -->\n```bash\ncurl -s http://127.0.0.1:{port}/hello.txt\n```\n\n"
        f"<!-- docs-test: run expect='goodbye' -->\n```bash\ncurl -s http://127.0.0.1:{port}/hello.txt\n```\n"))
    server, fetch, wrong = collect(page)
    scratch = _scratch(tmp_path)
    try:
        run_block(server, scratch)
        run_block(fetch, scratch)
        with pytest.raises(AssertionError, match=r"page\.md:12: output does not match 'goodbye'"):
            run_block(wrong, scratch)
    finally:
        stop_servers(scratch)
    assert scratch.servers == []
    with pytest.raises(AssertionError, match="page.md:12: exit code 7"):  # curl: nothing listens now
        run_block(wrong, scratch)


def test_plain_diagrams_and_sql_are_not_blocks(tmp_path: Path):
    page = _page(tmp_path, "```\n photos ─> ingest\n```\n\n```sql\nSELECT 1;\n```\n")
    assert collect(page) == []
