"""The scoring commands' common mistakes, each one ``Error:`` line and exit code 2, in a real
process against the real broker and PostgreSQL (docs/scoring.md, issue 23's table)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from worker_support import AMQP_URL, PG_ADMIN, fresh_pg_database

pytestmark = pytest.mark.integration


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CLAZZIFY_DB_URL"}
    return subprocess.run([sys.executable, "-m", "clazzify.cli", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=env)


def one_error(done: subprocess.CompletedProcess) -> str:
    """The single ``Error:`` line (asserts exit 2, no traceback, exactly one such line)."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    return errors[0]


def with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    user = rest.split("@", 1)[0].split(":", 1)[0]
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[1]}"


def test_worker_on_a_missing_database_says_createdb(tmp_path: Path) -> None:
    name = f"clazzify_missing_{uuid.uuid4().hex[:8]}"
    admin = PG_ADMIN.rsplit("/", 1)[0]
    line = one_error(run("worker", "--endpoint", "http://127.0.0.1:1", "--db",
                         f"{admin}/{name}", "--queue", f"clazzify.test.{name}", cwd=tmp_path))
    assert "does not exist" in line and "createdb" in line and name in line


def test_worker_with_a_wrong_broker_password_stops_at_once(tmp_path: Path) -> None:
    bad = with_password(AMQP_URL, "not-the-password")
    done = run("worker", "--endpoint", "http://127.0.0.1:1", "--db",
               f"sqlite:///{tmp_path}/s.db", "--amqp-url", bad, "--queue", "clazzify.test.auth",
               cwd=tmp_path)
    line = one_error(done)
    assert "refused the login" in line and "not-the-password" not in done.stderr


@pytest.mark.parametrize("broker", ["down", "wrong password"])
def test_enqueue_without_a_usable_broker_is_one_line(tmp_path: Path, broker: str) -> None:
    url = ("amqp://guest:guest@127.0.0.1:1/%2F" if broker == "down"
           else with_password(AMQP_URL, "not-the-password"))
    line = one_error(run("enqueue", str(tmp_path), "--amqp-url", url, "--queue",
                         "clazzify.test.enqueue", cwd=tmp_path))
    assert ("cannot reach the broker" if broker == "down" else "refused the login") in line


def test_query_commands_never_create_a_database(tmp_path: Path) -> None:
    line = one_error(run("images", "--restaurant", "R", cwd=tmp_path))  # no --db
    assert "no scores database at .clazzify/scores.db" in line and "--db" in line
    line = one_error(run("images", "--restaurant", "R", "--db",
                         f"sqlite:///{tmp_path}/scroes.db", cwd=tmp_path))
    assert "scroes.db" in line
    line = one_error(run("review-queue", "--db", str(tmp_path / "typo.db"), cwd=tmp_path))
    assert "typo.db" in line
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_an_unknown_label_is_refused(tmp_path: Path) -> None:
    from clazzify.scoring.scores import Batch, ImageRow, ScoreRepository, ScoreRow

    with fresh_pg_database() as db:
        repo = ScoreRepository.open(db)
        probs = {"ambiance": 0.1, "food": 0.7, "human": 0.1, "menu": 0.1}
        repo.save(Batch(images=[ImageRow("p1", "/x/p1.jpg", "R")],
                        scores=[ScoreRow("p1", "clazzify", "1", probs, "/x/p1.jpg")]))
        repo.close()
        line = one_error(run("images", "--restaurant", "R", "--label", "pizza", "--db", db,
                             cwd=tmp_path))
        assert "'pizza'" in line and "ambiance, food, human, menu" in line
        done = run("images", "--restaurant", "R", "--label", "food", "--db", db,
                   "--format", "json", cwd=tmp_path)
        assert done.returncode == 0 and '"p1"' in done.stdout, done.stderr
    with fresh_pg_database() as empty:  # exists, but nothing was ever scored into it
        line = one_error(run("images", "--restaurant", "R", "--db", empty, cwd=tmp_path))
        assert "holds no scores yet" in line
