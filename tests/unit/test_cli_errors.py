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


# --- The shared handler: real exceptions of each family, raised by the real libraries -------


def _raised(call) -> BaseException:
    try:
        call()
    except BaseException as e:  # the test hands whatever was raised to describe()
        return e
    raise AssertionError("expected the call to fail")


def _pika_refused():
    import pika

    pika.BlockingConnection(pika.URLParameters("amqp://guest:guest@127.0.0.1:1/%2F?connection_attempts=1"))


def _httpx_refused():
    import httpx

    httpx.get("http://127.0.0.1:1/v2/health/ready", timeout=5)


def _psycopg_refused():
    import psycopg

    psycopg.connect("postgresql://postgres@127.0.0.1:1/clazzify", connect_timeout=5)


def _sqlalchemy_bad_url():
    import sqlalchemy

    sqlalchemy.create_engine("nosuchdb://host/db")


def _kubeconfig_missing():
    from kubernetes import config

    config.load_kube_config(config_file="/nonexistent/kubeconfig")


def _port_in_use():
    import socket

    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        a.listen()
        b.bind(a.getsockname())


def _clazzify_error():
    from clazzify.core.errors import StorageError

    raise StorageError("bucket 'uploads' not found at http://minio:9000: create it or set --source")


def _wrapped_clazzify_error():
    try:
        _psycopg_refused()
    except Exception as e:
        from clazzify.core.errors import StorageError

        raise StorageError("cannot open the scores database postgresql://...: start it") from e


@pytest.mark.parametrize(("call", "expected"), [
    (_pika_refused, "cannot reach the RabbitMQ broker: connection refused: start it, or fix --amqp-url"),
    (_httpx_refused, "cannot reach the model server at http://127.0.0.1:1: connection refused"),
    (_psycopg_refused, "cannot reach PostgreSQL at 127.0.0.1:1: connection refused: start it, or fix --db"),
    (_sqlalchemy_bad_url, "not a database URL"),
    (_kubeconfig_missing, "no Kubernetes credentials"),
    (_port_in_use, "the port is already in use"),
    (lambda: Path("/nonexistent/settings.yaml").read_text(),
     "/nonexistent/settings.yaml: no such file or folder: check the path"),
    (lambda: (_ for _ in ()).throw(PermissionError(13, "Permission denied", "/etc/keys")),
     "/etc/keys: permission denied"),
    (_clazzify_error, "bucket 'uploads' not found at http://minio:9000: create it or set --source"),
    (_wrapped_clazzify_error, "cannot open the scores database postgresql://...: start it"),
], ids=["pika refused", "httpx refused", "psycopg refused", "sqlalchemy bad url", "no kubeconfig",
        "port in use", "missing file", "permission", "ClazzifyError", "ClazzifyError wrapping psycopg"])
def test_describe_names_the_thing_and_the_fix(call, expected: str):
    from clazzify.core.errors import describe

    message = describe(_raised(call))
    assert message is not None and expected in message, message
    assert "\n" not in message


def test_describe_leaves_a_bug_alone():
    from clazzify.core.errors import describe

    assert describe(_raised(lambda: {}["missing"])) is None
    assert describe(_raised(lambda: 1 / 0)) is None


def test_describe_never_prints_a_password():
    import pika

    from clazzify.core.errors import describe

    e = _raised(lambda: pika.BlockingConnection(
        pika.URLParameters("amqp://guest:s3cret-pw@127.0.0.1:1/%2F?connection_attempts=1")))
    assert "s3cret-pw" not in describe(e)


def test_run_command_gives_other_entry_points_the_same_contract(capsys: pytest.CaptureFixture[str]):
    """python -m pipelines.train and python -m serving wrap their click command in run_command."""
    import click

    from clazzify.cli import run_command

    @click.command()
    @click.option("--host")
    def submit(host: str) -> None:
        _httpx_refused()

    @click.command()
    def load() -> None:
        raise click.ClickException("cannot load /no/bundle: check --model-uri")

    @click.command()
    def bug() -> None:
        {}["missing"]

    class GateFailed(click.ClickException):
        exit_code = 3

    @click.command()
    def gate() -> None:
        raise GateFailed("the gate failed: accuracy 0.61 < min_accuracy 0.7")

    assert run_command(submit, ["--host", "http://127.0.0.1:1"], prog_name="submit") == 2
    _assert_one_clean_line(2, capsys.readouterr().err)
    assert run_command(load, [], prog_name="load") == 2  # a ClickException is a bad input: 2, not 1
    assert capsys.readouterr().err.strip() == "Error: cannot load /no/bundle: check --model-uri"
    assert run_command(submit, ["--help"], prog_name="submit") == 0
    assert run_command(submit, ["--hots", "x"], prog_name="submit") == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("Error: No such option")
    assert run_command(gate, [], prog_name="gate") == 3  # a documented code of its own stays
    capsys.readouterr()
    with pytest.raises(KeyError):
        run_command(bug, [], prog_name="bug")


def test_verbose_prints_the_traceback_then_the_line(tmp_path: Path):
    argv = ["enqueue", str(tmp_path), "--queue", "q", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2F"]
    quiet = CliRunner().invoke(main, argv)
    loud = CliRunner().invoke(main, ["-v", *argv])
    for result in (quiet, loud):
        assert result.exit_code == 2, result.output
        assert result.stderr.strip().splitlines()[-1].startswith("Error: cannot reach the broker")
    assert "Traceback" not in quiet.stderr and "Traceback (most recent call last)" in loud.stderr
    assert "CLAZZIFY_VERBOSE" not in __import__("os").environ  # -v does not leak into the next command


def test_a_busy_port_is_refused_before_a_server_starts():
    import socket

    from clazzify.core.errors import ConfigError, ensure_port_free

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"port {port} on 127.0.0.1 is already in use: .* --port"):
            ensure_port_free("127.0.0.1", port, "--port")
    ensure_port_free("127.0.0.1", port, "--port")  # free again once closed
