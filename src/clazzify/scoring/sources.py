"""Which photo locations an upload event may name: the configured buckets and folders only.

An event is input from outside: without this check it could make the worker read any
file it can open or any bucket its credentials reach (``s3://mlflow/...``). The allow-list
comes from ``clazzify worker --allow-source`` or ``CLAZZIFY_ALLOWED_SOURCES`` (comma
separated): ``s3://bucket`` (optionally ``s3://bucket/prefix/``) entries and local
folders. With none given, the worker allows the folder it was started in and no bucket.

Local paths are compared after resolving ``..`` and symbolic links, so a link inside an
allowed folder that points outside it is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from clazzify.core import storage
from clazzify.core.errors import ConfigError, StorageError

ENV_VAR = "CLAZZIFY_ALLOWED_SOURCES"


class SourceNotAllowed(StorageError):
    """An event names a location outside the allow-list; it is dead-lettered."""

    reason = "source_not_allowed"


@dataclass(frozen=True)
class SourcePolicy:
    """The allow-list: ``s3_prefixes`` as ``(bucket, key prefix)``, ``local_roots`` resolved."""

    s3_prefixes: tuple[tuple[str, str], ...] = ()
    local_roots: tuple[Path, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str], *, default_root: Path | None = None) -> SourcePolicy:
        """Build the policy from ``s3://bucket[/prefix]`` and folder entries.

        Args:
            entries: the allowed locations; blanks are ignored.
            default_root: the folder allowed when ``entries`` is empty (None: nothing).

        Raises:
            ConfigError: an entry has another scheme or no bucket.
        """
        s3: list[tuple[str, str]] = []
        roots: list[Path] = []
        for raw in (e.strip() for e in entries):
            if not raw:
                continue
            if raw.startswith("s3://"):
                parsed = urlparse(raw)
                if not parsed.netloc:
                    raise ConfigError(f"allowed source {raw!r} names no bucket: use s3://bucket")
                s3.append((parsed.netloc, parsed.path.lstrip("/")))
            elif raw.startswith("file://") or "://" not in raw:
                roots.append(storage.local_path(raw).expanduser().resolve())
            else:
                raise ConfigError(
                    f"allowed source {raw!r}: use s3://bucket[/prefix] or a local folder"
                )
        if not s3 and not roots and default_root is not None:
            roots.append(default_root.resolve())
        return cls(tuple(s3), tuple(roots))

    @classmethod
    def from_env(cls, value: str | None = None, *, default_root: Path | None = None) -> SourcePolicy:
        """The policy of ``CLAZZIFY_ALLOWED_SOURCES`` (or ``value``), comma separated."""
        raw = os.environ.get(ENV_VAR, "") if value is None else value
        return cls.parse(raw.split(","), default_root=default_root)

    def describe(self) -> str:
        parts = [f"s3://{b}/{p}" for b, p in self.s3_prefixes] + [str(r) for r in self.local_roots]
        return ", ".join(parts) or "nothing"

    def check(self, uri: str) -> None:
        """Refuse ``uri`` unless it lies inside an allowed bucket prefix or folder.

        Raises:
            SourceNotAllowed: outside the allow-list.
            storage.PermanentStorageError: an unsupported scheme.
        """
        if storage.is_s3(uri):
            bucket, key = storage.split_s3(uri)
            if any(bucket == b and key.startswith(p) for b, p in self.s3_prefixes):
                return
        else:
            path = storage.local_path(uri)  # raises for other schemes
            resolved = Path(os.path.realpath(path))
            if any(resolved.is_relative_to(root) for root in self.local_roots):
                return
        raise SourceNotAllowed(
            f"{uri} is outside the allowed sources ({self.describe()}): add its bucket or "
            f"folder with --allow-source / {ENV_VAR} if the worker should read it"
        )
