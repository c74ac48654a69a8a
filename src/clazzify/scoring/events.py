"""Upload events: what a queue message says was uploaded, parsed and validated.

Two message shapes are accepted, both JSON:

- the S3 event notification that MinIO (or AWS S3) publishes for
  ``s3:ObjectCreated:*``: ``{"EventName": ..., "Key": ..., "Records": [{"eventName":
  "s3:ObjectCreated:Put", "s3": {"bucket": {"name": ...}, "object": {"key": ...,
  "userMetadata": {...}}}}]}``. One notification may carry several records. Object
  keys arrive URL-encoded (``+`` for a space) and are decoded here. The image id is
  the object's ``s3://bucket/key`` URI unless the uploader set ``x-amz-meta-image-id``;
  ``x-amz-meta-restaurant-id`` and ``x-amz-meta-source`` fill the optional fields.
  Records of other event types (``s3:ObjectRemoved:*``...) are ignored.
- a plain message ``{"image_id": ..., "uri": ..., "restaurant_id"?: ..., "source"?: ...}``.

Anything else is a :class:`EventError`: a permanent failure that no retry can fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from clazzify.core.errors import ClazzifyError

#: Longest accepted id or URI; the database columns are sized to match.
MAX_ID_LENGTH = 512
MAX_URI_LENGTH = 2048

_META_IMAGE_ID = "x-amz-meta-image-id"
_META_RESTAURANT_ID = "x-amz-meta-restaurant-id"
_META_SOURCE = "x-amz-meta-source"


class EventError(ClazzifyError, ValueError):
    """A message that is not a valid upload event; it goes to the dead-letter queue.

    Attributes:
        reason: short machine-readable category (``bad_json``, ``bad_event``).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class UploadEvent:
    """One uploaded image to score.

    Attributes:
        image_id: stable id of the photo (the key scores are stored under).
        uri: where its bytes are: ``s3://bucket/key``, ``file://`` or a local path.
        restaurant_id: the restaurant the photo belongs to, when known.
        source: where the upload came from (app, web, backfill...), when known.
    """

    image_id: str
    uri: str
    restaurant_id: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        for name, limit in (("image_id", MAX_ID_LENGTH), ("uri", MAX_URI_LENGTH)):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise EventError("bad_event", f"{name} must be a non-empty string, got {value!r}")
            if len(value) > limit:
                raise EventError(
                    "bad_event", f"{name} is {len(value)} characters long; the limit is {limit}"
                )
        for name in ("restaurant_id", "source"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or len(value) > MAX_ID_LENGTH):
                raise EventError(
                    "bad_event",
                    f"{name} must be a string of at most {MAX_ID_LENGTH} characters, got {value!r}",
                )


def _optional_str(value: Any, name: str) -> str | None:
    """Ids may arrive as JSON numbers (``"restaurant_id": 42``); store them as text."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise EventError("bad_event", f"{name} must be a string or an integer, got {value!r}")
    return str(value)


def _lower_keys(mapping: Any) -> dict[str, Any]:
    if not isinstance(mapping, Mapping):
        return {}
    return {str(k).lower(): v for k, v in mapping.items()}


def _from_s3_record(record: Any) -> UploadEvent | None:
    if not isinstance(record, Mapping):
        raise EventError("bad_event", f"S3 event record is not an object: {record!r:.200}")
    name = record.get("eventName", "")
    if not isinstance(name, str) or not name.startswith(("s3:ObjectCreated:", "ObjectCreated:")):
        return None
    try:
        bucket = record["s3"]["bucket"]["name"]
        raw_key = record["s3"]["object"]["key"]
    except (KeyError, TypeError) as e:
        raise EventError(
            "bad_event", f"S3 event record lacks s3.bucket.name or s3.object.key ({e!r})"
        ) from e
    if not isinstance(bucket, str) or not isinstance(raw_key, str) or not bucket or not raw_key:
        raise EventError(
            "bad_event", f"S3 event record has an empty bucket or key: {bucket!r}/{raw_key!r}"
        )
    uri = f"s3://{bucket}/{unquote_plus(raw_key)}"
    meta = _lower_keys(record["s3"]["object"].get("userMetadata"))
    return UploadEvent(
        image_id=_optional_str(meta.get(_META_IMAGE_ID), "image id metadata") or uri,
        uri=uri,
        restaurant_id=_optional_str(meta.get(_META_RESTAURANT_ID), "restaurant id metadata"),
        source=_optional_str(meta.get(_META_SOURCE), "source metadata") or "s3-event",
    )


def parse_event(payload: Mapping[str, Any]) -> list[UploadEvent]:
    """Turn one decoded message into the upload events it announces.

    Returns:
        the events; empty for an S3 notification that announces no new object
        (a deletion, a test event), which is acknowledged without work.

    Raises:
        EventError: the message has neither shape, or a field is invalid.
    """
    if not isinstance(payload, Mapping):
        raise EventError(
            "bad_event", f"message must be a JSON object, got {type(payload).__name__}"
        )
    if "Records" in payload:
        records = payload["Records"]
        if not isinstance(records, list):
            raise EventError("bad_event", "S3 notification 'Records' must be a list")
        return [e for e in map(_from_s3_record, records) if e is not None]
    if "image_id" in payload or "uri" in payload:
        missing = [k for k in ("image_id", "uri") if not payload.get(k)]
        if missing:
            raise EventError(
                "bad_event",
                f"plain upload message lacks {', '.join(missing)}: send "
                '{"image_id": ..., "uri": ..., "restaurant_id"?: ..., "source"?: ...}',
            )
        return [
            UploadEvent(
                image_id=_optional_str(payload["image_id"], "image_id") or "",
                uri=payload["uri"],
                restaurant_id=_optional_str(payload.get("restaurant_id"), "restaurant_id"),
                source=_optional_str(payload.get("source"), "source"),
            )
        ]
    if payload.get("Event") == "s3:TestEvent":
        return []
    keys = ", ".join(sorted(map(str, payload)))[:200]
    raise EventError(
        "bad_event",
        f"unknown message shape (keys: {keys}): expected an S3 ObjectCreated notification "
        'with \'Records\' or a plain {"image_id", "uri"} message',
    )


def parse_message(body: bytes) -> list[UploadEvent]:
    """Decode a queue message body (UTF-8 JSON) into upload events.

    Raises:
        EventError: the body is not UTF-8 JSON or not a valid event.
    """
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EventError("bad_json", f"message body is not UTF-8 JSON: {e}") from e
    return parse_event(payload)
