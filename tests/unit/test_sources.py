"""The allow-list of sources an upload event may name."""

from __future__ import annotations

from pathlib import Path

import pytest

from clazzify.core.errors import ConfigError
from clazzify.core.storage import PermanentStorageError
from clazzify.scoring.sources import SourceNotAllowed, SourcePolicy

pytestmark = pytest.mark.unit


def test_buckets_prefixes_and_folders(tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    policy = SourcePolicy.parse(["s3://uploads", "s3://shared/photos/", f"file://{tmp_path}/up"])
    for uri in ("s3://uploads/a/b.jpg", "s3://shared/photos/x.jpg", str(tmp_path / "up/x.jpg"),
                f"file://{tmp_path}/up/x.jpg"):
        policy.check(uri)
    for uri in ("s3://uploadsX/a.jpg", "s3://shared/other/x.jpg", "s3://mlflow/m.pkl",
                str(tmp_path / "up/../secret.jpg"), str(tmp_path / "upX/x.jpg"), "/etc/passwd"):
        with pytest.raises(SourceNotAllowed, match="outside the allowed sources"):
            policy.check(uri)
    with pytest.raises(PermanentStorageError) as e:
        policy.check("http://127.0.0.1:9/x.jpg")
    assert e.value.reason == "unsupported_scheme"


def test_the_default_is_one_folder_and_no_bucket(tmp_path: Path) -> None:
    policy = SourcePolicy.from_env("", default_root=tmp_path)
    policy.check(str(tmp_path / "x.jpg"))
    with pytest.raises(SourceNotAllowed):
        policy.check("s3://uploads/x.jpg")
    assert SourcePolicy.from_env("s3://uploads", default_root=tmp_path).local_roots == ()


@pytest.mark.parametrize("entry", ["s3://", "http://host/x", "gs://bucket"])
def test_bad_entries_are_refused(entry: str) -> None:
    with pytest.raises(ConfigError):
        SourcePolicy.parse([entry])
