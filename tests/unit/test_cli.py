import pytest
from click.testing import CliRunner

from clazzify.cli import main

pytestmark = pytest.mark.unit


def test_every_subcommand_has_help():
    runner = CliRunner()
    names = sorted(main.commands)
    assert {"demo-data", "ingest", "preprocess", "train", "evaluate", "find-label-issues", "serve", "worker",
            "score", "rollback"} <= set(names)
    for name in names:
        if name == "serve":  # forwards its arguments to `python -m serving` (tested there)
            continue
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output and len(result.output) > 100, name


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path):
    result = CliRunner().invoke(main, ["ingest", str(tmp_path / "missing"), "-o", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert "does not exist" in result.output and "Traceback" not in result.output
