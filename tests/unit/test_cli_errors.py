"""Every subcommand given a bad --db, --endpoint or --source ends with one clean line on
stderr and exit code 2: the CLI group reports ClazzifyError once, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from clazzify.cli import main

pytestmark = pytest.mark.unit

BAD_DB = ["nosuchdb://host/db", "postgresql://nobody@127.0.0.1:1/none"]
BAD_ENDPOINT = ["not a url", "ftp://model-server"]
BAD_SOURCE = ["{tmp}/no-such-folder", "s3://"]
UNREACHABLE_ENDPOINT = "http://127.0.0.1:1"


def _cases() -> list[tuple[str, list[str]]]:
    """(id, argv) with ``{tmp}`` for the test's folder and ``{db}`` for a good database."""
    cases = []
    for db in BAD_DB:
        cases += [
            ("images --db", ["images", "--restaurant", "r1", "--db", db]),
            ("review-queue --db", ["review-queue", "--db", db]),
            ("relabel-export --db", ["relabel-export", "-o", "{tmp}/out.csv", "--db", db]),
            ("relabel-import --db", ["relabel-import", "{tmp}/answers.csv", "-o", "{tmp}/m.csv",
                                     "--record-labels", "--db", db]),
            ("score --db", ["score", "--source", "{tmp}/photos", "--endpoint",
                            UNREACHABLE_ENDPOINT, "--db", db]),
        ]
    cases += [
        ("review-ui --db", ["review-ui", "--db", BAD_DB[0]]),
        ("review-ui --db users", ["review-ui", "--db", BAD_DB[0], "users", "remove", "nobody"]),
    ]
    # An unreachable database is no bad value for the worker: it waits for it with backoff
    # (a pod may start before PostgreSQL); a URL no driver reads is.
    cases.append(("worker --db", ["worker", "--endpoint", UNREACHABLE_ENDPOINT, "--db", BAD_DB[0]]))
    for endpoint in BAD_ENDPOINT:
        cases += [
            ("score --endpoint", ["score", "--source", "{tmp}/photos", "--endpoint", endpoint,
                                  "--db", "{db}"]),
            ("worker --endpoint", ["worker", "--endpoint", endpoint, "--db", "{db}"]),
        ]
    for source in BAD_SOURCE:
        cases += [
            ("ingest SOURCE", ["ingest", source, "-o", "{tmp}/ingest"]),
            ("enqueue SOURCE", ["enqueue", source, "--queue", "cluster.cli-errors"]),
            ("score --source", ["score", "--source", source, "--endpoint", UNREACHABLE_ENDPOINT,
                                "--db", "{db}"]),
            ("retrain SOURCE", ["retrain", source, "--home", "{tmp}/home", "--dry-run"]),
        ]
    return cases


def test_every_command_with_a_db_endpoint_or_source_is_covered():
    options = {"db_url": "--db", "endpoint": "--endpoint", "source": "SOURCE"}
    having = {(name, flag) for name, cmd in main.commands.items() for p in cmd.params
              for key, flag in options.items() if p.name == key}
    covered = {(argv[0], case_id.split(" ")[1].replace("--source", "SOURCE"))
               for case_id, argv in _cases()}
    assert having == covered


@pytest.mark.parametrize(("case_id", "argv"), _cases(), ids=[c[0] for c in _cases()])
def test_a_bad_value_is_one_clean_line_and_exit_2(case_id: str, argv: list[str], tmp_path: Path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "answers.csv").write_text("image_id,uri,corrected_label\n")
    argv = [a.format(tmp=tmp_path, db=f"sqlite:///{tmp_path}/scores.db") for a in argv]
    result = CliRunner().invoke(main, argv)
    assert isinstance(result.exception, SystemExit), (case_id, result.exception)
    _assert_one_clean_line(result.exit_code, result.stderr)


def _assert_one_clean_line(code: int, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert code == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1 and errors[0] == lines[-1], stderr


def test_a_real_process_prints_the_same_one_line(tmp_path: Path):
    """What a user sees on the terminal: stderr of a real ``python -m clazzify.cli``."""
    result = subprocess.run([sys.executable, "-m", "clazzify.cli", "review-queue", "--db", BAD_DB[0]],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    _assert_one_clean_line(result.returncode, result.stderr)
    assert "nosuchdb" in result.stderr
