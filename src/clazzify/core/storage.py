"""Read and write URIs: local paths / ``file://`` (the embedded default) or ``s3://``.

S3 goes through the ``minio`` client. Endpoint and credentials come from the
usual variables, read when a client is first needed (never at import):

- ``AWS_ENDPOINT_URL`` or ``MINIO_ENDPOINT`` (``http://host:9000`` or ``host:9000``)
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or ``MINIO_ACCESS_KEY`` / ``MINIO_SECRET_KEY``)
- ``MINIO_SECURE`` / ``AWS_USE_SSL`` (``true``/``false``); otherwise the endpoint's scheme decides
- ``AWS_REGION`` / ``AWS_DEFAULT_REGION``
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

from clazzify.core.errors import StorageError

_TRUE = {"1", "true", "yes", "on"}
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
        raise StorageError(f"unsupported URI scheme in {uri!r}: use a local path, file:// or s3://")
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
