import os
from pathlib import Path

import pytest

from clazzify.core import storage
from clazzify.core.errors import StorageError
from clazzify.core.storage import S3Settings

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("env", "endpoint", "secure"),
    [
        ({"AWS_ENDPOINT_URL": "http://minio:9000"}, "minio:9000", False),
        ({"AWS_ENDPOINT_URL": "https://s3.example.com"}, "s3.example.com", True),
        ({"MINIO_ENDPOINT": "minio:9000"}, "minio:9000", False),
        ({"MINIO_ENDPOINT": "minio:9000", "MINIO_SECURE": "true"}, "minio:9000", True),
        ({"AWS_ENDPOINT_URL": "https://m:9000", "MINIO_SECURE": "false"}, "m:9000", False),
    ],
)
def test_settings_from_env(env, endpoint, secure):
    s = S3Settings.from_env({**env, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    assert (s.endpoint, s.secure, s.access_key, s.secret_key) == (endpoint, secure, "k", "s")


@pytest.mark.parametrize(
    ("env", "match"),
    [({}, "AWS_ENDPOINT_URL"), ({"MINIO_ENDPOINT": "m:9000", "MINIO_SECURE": "maybe"}, "not a boolean")],
)
def test_bad_settings_say_what_to_set(env, match):
    with pytest.raises(StorageError, match=match):
        S3Settings.from_env(env)


def test_uri_helpers(tmp_path):
    assert storage.split_s3("s3://bucket/a/b.jpg") == ("bucket", "a/b.jpg")
    assert storage.join("s3://b/p/", "x", "/y") == "s3://b/p/x/y"
    assert storage.local_path(f"file://{tmp_path}/a b") == tmp_path / "a b"
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        storage.local_path("gs://bucket/x")
    with pytest.raises(StorageError):
        storage.split_s3("s3:///nobucket")


def test_local_round_trip(tmp_path):
    uri = str(tmp_path / "a" / "b.bin")
    storage.write_bytes(uri, b"abc")
    assert storage.read_bytes(uri) == b"abc"
    assert list(storage.list_files(str(tmp_path))) == [uri]
    assert storage.list_children(str(tmp_path)) == ["a"]
    with pytest.raises(StorageError, match="cannot read"):
        storage.read_bytes(str(tmp_path / "missing"))


def test_read_bounded_reads_up_to_the_limit_and_refuses_more(tmp_path: Path) -> None:
    exact = tmp_path / "exact.jpg"
    exact.write_bytes(b"x" * 100)
    assert storage.read_bounded(str(exact), 100) == b"x" * 100
    assert storage.read_bounded(f"file://{exact}", 100) == b"x" * 100
    with pytest.raises(storage.PermanentStorageError) as e:
        storage.read_bounded(str(exact), 99)
    assert e.value.reason == "too_large"


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("/dev/zero", "not_a_file"),  # endless: must be refused, never read
        ("/nonexistent/photo.jpg", "missing_object"),
        ("http://127.0.0.1:9/x.jpg", "unsupported_scheme"),
        ("/etc/passwd/x.jpg", "missing_object"),
    ],
)
def test_read_bounded_refuses_what_no_retry_can_fix(uri: str, reason: str) -> None:
    with pytest.raises(storage.PermanentStorageError) as e:
        storage.read_bounded(uri, 1000)
    assert e.value.reason == reason


def test_read_bounded_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(storage.PermanentStorageError) as e:
        storage.read_bounded(str(fifo), 1000)
    assert e.value.reason == "not_a_file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_read_bounded_permission_denied_is_permanent(tmp_path: Path) -> None:
    locked = tmp_path / "locked.jpg"
    locked.write_bytes(b"x")
    locked.chmod(0)
    with pytest.raises(storage.PermanentStorageError) as e:
        storage.read_bounded(str(locked), 1000)
    assert e.value.reason == "permission_denied"


class _S3Answer(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code
        self.message = code


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("NoSuchKey", "missing_object"),
        ("NoSuchBucket", "unknown_bucket"),
        ("AccessDenied", "access_denied"),
        ("InternalError", None),  # a 5xx: transient
        ("SlowDown", None),
    ],
)
def test_s3_answers_are_permanent_or_transient_by_what_they_are(code: str, reason) -> None:
    error = storage._s3_failure("s3://b/k", _S3Answer(code))
    if reason is None:
        assert not isinstance(error, storage.PermanentStorageError)
    else:
        assert isinstance(error, storage.PermanentStorageError) and error.reason == reason


def test_an_unreachable_s3_endpoint_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    # Port 1 refuses at once; no retries, so the test is quick.
    import urllib3
    from minio import Minio

    fast = Minio("127.0.0.1:1", access_key="k", secret_key="s", secure=False,
                 http_client=urllib3.PoolManager(retries=False, timeout=2))
    monkeypatch.setattr(storage, "client", lambda settings=None: fast)
    with pytest.raises(StorageError) as e:
        storage.read_bounded("s3://uploads/x.jpg", 1000)
    assert not isinstance(e.value, storage.PermanentStorageError)
