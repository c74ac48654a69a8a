"""The model server's command line keeps the error contract: a bad path, key file, setting
or port ends in one ``Error: ...`` line naming it and the fix, exit code 2; and it listens
on loopback unless told otherwise."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from serving_support import KEY, free_port, listening_addresses, running_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: The three ways to start the server; `python -m serving` runs from a checkout's root.
ENTRY_POINTS = [["serving"], ["clazzify.serving"], ["clazzify.cli", "serve"]]


def _run(command: list[str], args: list[str], keys: str | None = KEY,
         timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CLAZZIFY_API_KEYS", "CLAZZIFY_HOST")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    if keys:
        env["CLAZZIFY_API_KEYS"] = keys
    ports = ["--http-port", str(free_port()), "--grpc-port", str(free_port())]
    if any(a.startswith(("--http-port", "--grpc-port")) for a in args):
        ports = []
    return subprocess.run([sys.executable, "-m", *command, *ports, *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("Error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert "Traceback" not in proc.stdout
    return lines[0]


def _bad_settings(tmp_path: Path, bundle: Path) -> list[tuple[str, list[str], tuple[str, ...]]]:
    short = tmp_path / "short-keys"
    short.write_text("dev-key-1\n")
    admin = tmp_path / "admin-keys"
    admin.write_text(f"{KEY}\n")
    empty = tmp_path / "empty-keys"
    empty.write_text("# nothing yet\n")
    b = ["--model-uri", str(bundle)]
    return [
        ("missing model folder", ["--model-uri", str(tmp_path / "no-such-model")],
         ("cannot load", "no-such-model")),
        ("registry URI without alias", ["--model-uri", "models:/clazzify"],
         ("names no alias or version", "models:/NAME@ALIAS")),
        ("missing key file", [*b, "--api-keys-file", str(tmp_path / "no-keys")],
         ("--api-keys-file", "no-keys")),
        ("short key", [*b, "--api-keys-file", str(short)], ("too short", "16")),
        ("admin key file that is also a data key", [*b, "--admin-keys-file", str(admin)],
         ("both a data-plane key and an admin key",)),
        ("empty admin key file", [*b, "--admin-keys-file", str(empty)], ("holds no key",)),
        ("zero images", [*b, "--max-images", "0"], ("max_images",)),
        ("unknown engine", [*b, "--engine", "tensorrt"], ("--engine", "tensorrt")),
        ("port out of range", [*b, "--http-port", "70000"], ("--http-port", "70000")),
        ("not a number", [*b, "--max-batch-size", "many"], ("--max-batch-size", "many")),
        ("unknown option", [*b, "--no-such-flag"], ("--no-such-flag",)),
        ("tiny pixel budget", [*b, "--max-request-pixels", "10"], ("--max-request-pixels",)),
        # KServe's own flags: its module-level parser used to print a 25-line usage
        ("KServe flag, bad int", [*b, "--max_threads", "abc"], ("--max_threads", "abc")),
        ("KServe flag, bad choice", [*b, "--event-loop", "tokio"], ("--event-loop", "tokio")),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("command", ENTRY_POINTS, ids=" ".join)
def test_every_bad_setting_is_one_error_line_and_exit_2(command, tiny_bundle, tmp_path):
    cases = _bad_settings(tmp_path, tiny_bundle)
    if command != ["serving"]:  # the same function behind each: a sample of the table
        cases = cases[::4]
    for name, args, words in cases:
        proc = _run(command, args)
        try:
            _one_error_line(proc, *words)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e


def test_no_key_at_all_is_one_error_line(tiny_bundle):
    _one_error_line(_run(["serving"], ["--model-uri", str(tiny_bundle)], keys=None),
                    "no API key configured", "--insecure")


@pytest.mark.parametrize("which", ["--http-port", "--grpc-port"])
def test_a_busy_port_is_one_error_line_naming_it_and_the_fix(which, tiny_bundle):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = "--grpc-port" if which == "--http-port" else "--http-port"
        proc = _run(["serving"], ["--model-uri", str(tiny_bundle), which, str(port),
                                  other, str(free_port())])
    _one_error_line(proc, f"port {port}", "already in use", which)


def test_the_server_listens_on_loopback_unless_told_otherwise(tiny_bundle, tmp_path):
    grpc_port = free_port()
    with running_server(["--model-uri", str(tiny_bundle), "--grpc-port", str(grpc_port)],
                        tmp_path / "log") as port:
        assert listening_addresses(port) == {"127.0.0.1"}
        assert listening_addresses(grpc_port) == {"127.0.0.1"}
    log = (tmp_path / "log").read_text()
    assert "0.0.0.0" not in log and "[::]" not in log


def test_make_serve_binds_loopback_by_default():
    proc = subprocess.run(["make", "-n", "serve", "BIN=.venv/bin"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--host 127.0.0.1" in proc.stdout
    proc = subprocess.run(["make", "-n", "serve", "BIN=.venv/bin", "SERVE_HOST=0.0.0.0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--host 0.0.0.0" in proc.stdout
