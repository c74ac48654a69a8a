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


def test_ingest_pixels_for_then_preprocess_from_the_cache(demo_dir, tmp_path):
    import h5py
    import numpy as np

    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(demo_dir), "-o", str(tmp_path / "in"), "--pixels-for", "32"])
    assert result.exit_code == 0, result.output
    cache = tmp_path / "in" / "pixels"
    assert (cache / "pixels-00000.h5").is_file() and str(cache) in result.output
    for name, extra in (("plain", []), ("cached", ["--pixel-cache", str(cache)])):
        result = runner.invoke(main, ["preprocess", str(tmp_path / "in" / "manifest.csv"), "-o",
                                      str(tmp_path / name), "--image-size", "32", "--workers", "1", *extra])
        assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "plain" / "val.h5") as a, h5py.File(tmp_path / "cached" / "val.h5") as b:
        np.testing.assert_array_equal(a["images"][:], b["images"][:])
