"""Read and write URIs: local paths / ``file://`` (the embedded default) or ``s3://``.

S3 goes through the ``minio`` client. Endpoint and credentials come from the
usual variables, read when a client is first needed (never at import):

- ``AWS_ENDPOINT_URL`` or ``MINIO_ENDPOINT`` (``http://host:9000`` or ``host:9000``)
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or ``MINIO_ACCESS_KEY`` / ``MINIO_SECRET_KEY``)
- ``MINIO_SECURE`` / ``AWS_USE_SSL`` (``true``/``false``); otherwise the endpoint's scheme decides
- ``AWS_REGION`` / ``AWS_DEFAULT_REGION``
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import stat as stat_module
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

from clazzify.core.errors import StorageError

_TRUE = {"1", "true", "yes", "on"}
#: Bytes read per call while streaming a bounded read.
_CHUNK = 1 << 16
#: S3 answers that no retry can change (the object, the bucket or the permission).
_S3_PERMANENT = {
    "NoSuchKey": "missing_object",
    "NoSuchObject": "missing_object",
    "NotFound": "missing_object",
    "ResourceNotFound": "missing_object",
    "InvalidObjectName": "missing_object",
    "NoSuchBucket": "unknown_bucket",
    "InvalidBucketName": "unknown_bucket",
    "AccessDenied": "access_denied",
    "AllAccessDisabled": "access_denied",
}
#: Local errors that no retry can change.
_OS_PERMANENT = {
    errno.ENOENT: "missing_object",
    errno.ENOTDIR: "missing_object",
    errno.EISDIR: "not_a_file",
    errno.ELOOP: "not_a_file",
    errno.ENXIO: "not_a_file",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.ENAMETOOLONG: "missing_object",
}


class PermanentStorageError(StorageError):
    """A read that no retry can make succeed (missing, refused, not a file, too large...).

    Attributes:
        reason: short machine-readable category (``missing_object``, ``unknown_bucket``,
            ``access_denied``, ``permission_denied``, ``not_a_file``, ``too_large``,
            ``unsupported_scheme``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class S3Settings:
    """Where and how to reach an S3-compatible server (MinIO, AWS, moto)."""

    endpoint: str
    access_key: str | None
    secret_key: str | None
    secure: bool
    region: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        """Build settings from environment variables (see module docstring)."""
        env = os.environ if env is None else env
        raw = env.get("AWS_ENDPOINT_URL") or env.get("MINIO_ENDPOINT") or ""
        if not raw:
            raise StorageError(
                "no S3 endpoint configured: set AWS_ENDPOINT_URL (e.g. http://minio:9000) "
                "or MINIO_ENDPOINT before using s3:// URIs"
            )
        parsed = urlparse(raw if "://" in raw else f"//{raw}")
        if not parsed.hostname:
            raise StorageError(f"S3 endpoint {raw!r} has no host: use http://host:port")
        endpoint = parsed.netloc
        secure = parsed.scheme == "https"
        flag = (env.get("MINIO_SECURE") or env.get("AWS_USE_SSL") or "").strip().lower()
        if flag in _TRUE:
            secure = True
        elif flag in _FALSE:
            secure = False
        elif flag:
            raise StorageError(f"MINIO_SECURE={flag!r} is not a boolean: use true or false")
        return cls(
            endpoint=endpoint,
            access_key=env.get("AWS_ACCESS_KEY_ID") or env.get("MINIO_ACCESS_KEY"),
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or env.get("MINIO_SECRET_KEY"),
            secure=secure,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"),
        )

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{uri!r} is not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


def local_path(uri: str) -> Path:
    """A local path or ``file://`` URI as a :class:`Path`."""
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if "://" in uri:
        raise PermanentStorageError(
            "unsupported_scheme",
            f"unsupported URI scheme in {uri!r}: use a local path, file:// or s3://",
        )
    return Path(uri)


def join(base: str, *parts: str) -> str:
    """Join URI/path segments with ``/`` (works for s3:// and local paths)."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


@lru_cache(maxsize=8)
def _client_for(settings: S3Settings):  # -> minio.Minio
    from minio import Minio

    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=settings.secure,
        region=settings.region,
    )


def client(settings: S3Settings | None = None):  # -> minio.Minio
    """A cached ``minio.Minio`` client for ``settings`` (default: from the environment)."""
    return _client_for(settings or S3Settings.from_env())


def preflight(uri: str, settings: S3Settings | None = None) -> None:
    """Check that ``uri`` is usable before any work starts.

    For local URIs the parent folder must exist or be creatable. For s3:// URIs the
    endpoint must answer, the credentials must be accepted and the bucket must exist.

    Raises:
        StorageError: naming what is wrong and how to fix it.
    """
    if not is_s3(uri):
        return
    settings = settings or S3Settings.from_env()
    bucket, _ = split_s3(uri)
    from minio.error import S3Error
    from urllib3.exceptions import HTTPError

    if not settings.access_key or not settings.secret_key:
        raise StorageError(
            f"no credentials for {settings.url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    try:
        exists = client(settings).bucket_exists(bucket)
    except S3Error as e:
        if e.code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"}:
            raise StorageError(
                f"{settings.url} rejected the credentials ({e.code}): check "
                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            ) from e
        raise StorageError(f"{settings.url} answered {e.code}: {e.message}") from e
    except (HTTPError, OSError) as e:
        hint = (
            " (is it plain HTTP? set MINIO_SECURE=false)"
            if settings.secure
            else " (is it HTTPS? set MINIO_SECURE=true)"
        )
        raise StorageError(
            f"cannot reach S3 endpoint {settings.url}: {e.__class__.__name__}: {e}. Check "
            f"AWS_ENDPOINT_URL/MINIO_ENDPOINT and that the server is up{hint}"
        ) from e
    if not exists:
        raise StorageError(
            f"bucket {bucket!r} not found at {settings.url}: create it "
            f"(mc mb <alias>/{bucket}) or point the URI at an existing bucket"
        )


def read_bytes(uri: str) -> bytes:
    """Read a whole object or file."""
    if is_s3(uri):
        from minio.error import S3Error

        bucket, key = split_s3(uri)
        try:
            response = client().get_object(bucket, key)
        except S3Error as e:
            raise StorageError(f"cannot read {uri}: {e.code}: {e.message}") from e
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()
    path = local_path(uri)
    try:
        return path.read_bytes()
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror}") from e


def read_bounded(uri: str, limit: int) -> bytes:
    """Read an object or file of at most ``limit`` bytes, never holding more than ``limit + 1``.

    The size is checked first (``stat`` of a local file, ``HEAD`` of an object), then at most
    ``limit + 1`` bytes are streamed in, so neither a huge object nor one that grows while it
    is read (or lies about its size) can take more memory than that. Only regular files are
    opened, without blocking: a FIFO, a device or a socket is refused, never waited on.

    Raises:
        PermanentStorageError: missing, refused, not a regular file, larger than ``limit``
            or an unsupported scheme: no retry can help.
        StorageError: the store could not answer (unreachable, timeout, 5xx): a retry may.
    """
    if is_s3(uri):
        return _read_s3_bounded(uri, limit)
    return _read_local_bounded(local_path(uri), limit)


def _too_large(where: str, size: int, limit: int) -> PermanentStorageError:
    return PermanentStorageError(
        "too_large", f"{where} is {size} bytes or more; the limit is {limit}"
    )


def _read_local_bounded(path: Path, limit: int) -> bytes:
    def refused(e: OSError) -> StorageError:
        reason = _OS_PERMANENT.get(e.errno or 0)
        message = f"cannot read {path}: {e.strerror or e}"
        return PermanentStorageError(reason, message) if reason else StorageError(message)

    try:
        info = os.stat(path)
    except OSError as e:
        raise refused(e) from e
    if not stat_module.S_ISREG(info.st_mode):
        raise PermanentStorageError("not_a_file", f"{path} is not a regular file (a FIFO, "
                                    "device, socket or folder): only photo files are read")
    if info.st_size > limit:
        raise _too_large(str(path), info.st_size, limit)
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, open must not wait.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise refused(e) from e
    try:
        if not stat_module.S_ISREG(os.fstat(fd).st_mode):
            raise PermanentStorageError("not_a_file", f"{path} is not a regular file")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(_CHUNK, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise refused(e) from e
    finally:
        os.close(fd)
    if total > limit:
        raise _too_large(str(path), total, limit)
    return b"".join(chunks)


def _s3_failure(uri: str, e: Exception) -> StorageError:
    code = getattr(e, "code", None)
    reason = _S3_PERMANENT.get(code or "")
    message = f"cannot read {uri}: {code}: {getattr(e, 'message', e)}"
    return PermanentStorageError(reason, message) if reason else StorageError(message)


def _read_s3_bounded(uri: str, limit: int) -> bytes:
    from urllib3.exceptions import HTTPError

    try:
        return _read_s3_bounded_raw(uri, limit)
    except (HTTPError, OSError) as e:  # unreachable, timed out, cut off: a retry may help
        raise StorageError(f"cannot read {uri}: {e.__class__.__name__}: {e}") from e


def _read_s3_bounded_raw(uri: str, limit: int) -> bytes:
    from minio.error import S3Error

    bucket, key = split_s3(uri)
    s3 = client()
    try:
        info = s3.stat_object(bucket, key)
    except S3Error as e:
        # A HEAD answer has no body: a missing bucket reads as a missing key. Ask.
        if e.code == "NoSuchKey" and not _bucket_exists(s3, bucket):
            raise PermanentStorageError(
                "unknown_bucket", f"cannot read {uri}: bucket {bucket!r} does not exist"
            ) from e
        raise _s3_failure(uri, e) from e
    if info.size is not None and info.size > limit:
        raise _too_large(uri, info.size, limit)
    try:
        # A Range request: the server sends at most limit + 1 bytes whatever the object is now.
        response = s3.get_object(bucket, key, offset=0, length=limit + 1)
    except S3Error as e:
        raise _s3_failure(uri, e) from e
    try:
        chunks: list[bytes] = []
        total = 0
        for chunk in response.stream(_CHUNK):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:
                raise _too_large(uri, total, limit)
    finally:
        response.close()
        response.release_conn()
    return b"".join(chunks)


def _bucket_exists(s3, bucket: str) -> bool:
    from minio.error import S3Error

    try:
        return bool(s3.bucket_exists(bucket))
    except S3Error:
        return True  # cannot tell (e.g. no ListBucket permission): keep the first answer


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object or file, creating local parent folders."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client().put_object(bucket, key, io.BytesIO(data), length=len(data))
        return
    path = local_path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def download_dir(uri: str, local_dir: Path) -> Path:
    """Copy every object under ``uri`` into ``local_dir``; returns ``local_dir``."""
    local_dir.mkdir(parents=True, exist_ok=True)
    if not is_s3(uri):
        src = local_path(uri)
        if not src.is_dir():
            raise StorageError(f"{src} is not a folder")
        shutil.copytree(src, local_dir, dirs_exist_ok=True)
        return local_dir
    bucket, prefix = split_s3(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    found = False
    for obj in client().list_objects(bucket, prefix=prefix, recursive=True):
        if obj.is_dir:
            continue
        found = True
        dest = local_dir / obj.object_name[len(prefix) :]
        dest.parent.mkdir(parents=True, exist_ok=True)
        client().fget_object(bucket, obj.object_name, str(dest))
    if not found:
        raise StorageError(f"no objects under {uri}")
    return local_dir


def list_files(uri: str) -> Iterator[str]:
    """Yield the URI of every file/object below ``uri``, sorted, recursively."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        names = sorted(
            obj.object_name
            for obj in client().list_objects(bucket, prefix=prefix, recursive=True)
            if not obj.is_dir
        )
        for name in names:
            yield f"s3://{bucket}/{name}"
        return
    root = local_path(uri)
    if not root.is_dir():
        raise StorageError(f"{root} is not a folder")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        yield str(path)


def list_children(uri: str) -> list[str]:
    """Names of the immediate sub-folders / sub-prefixes of ``uri``."""
    if is_s3(uri):
        bucket, prefix = split_s3(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        return sorted(
            obj.object_name[len(prefix) :].rstrip("/")
            for obj in client().list_objects(bucket, prefix=prefix, recursive=False)
            if obj.is_dir
        )
    root = local_path(uri)
    if not root.is_dir():
        raise StorageError(f"source folder {root} does not exist or is not a folder")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
