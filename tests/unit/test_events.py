"""Upload event parsing: MinIO S3 notifications and plain messages."""

from __future__ import annotations

import json

import pytest

from clazzify.scoring.events import EventError, UploadEvent, parse_message

pytestmark = pytest.mark.unit


def minio_notification(
    key: str, event: str = "s3:ObjectCreated:Put", meta: dict | None = None
) -> dict:
    """The shape MinIO publishes to an AMQP target (trimmed of fields the parser ignores)."""
    return {
        "EventName": event,
        "Key": f"uploads/{key}",
        "Records": [
            {
                "eventVersion": "2.0",
                "eventSource": "minio:s3",
                "awsRegion": "",
                "eventTime": "2025-11-29T10:00:00.000Z",
                "eventName": event,
                "userIdentity": {"principalId": "minioadmin"},
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "Config",
                    "bucket": {"name": "uploads", "arn": "arn:aws:s3:::uploads"},
                    "object": {
                        "key": key,
                        "size": 1234,
                        "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                        "contentType": "image/jpeg",
                        "userMetadata": meta or {"content-type": "image/jpeg"},
                        "sequencer": "1800000000000000",
                    },
                },
                "source": {"host": "127.0.0.1", "port": "", "userAgent": "MinIO"},
            }
        ],
    }


def test_plain_message() -> None:
    body = json.dumps(
        {"image_id": "p1", "uri": "s3://b/p1.jpg", "restaurant_id": 42, "source": "app"}
    )
    assert parse_message(body.encode()) == [UploadEvent("p1", "s3://b/p1.jpg", "42", "app")]


def test_plain_message_optional_fields_may_be_absent() -> None:
    assert parse_message(b'{"image_id": "p1", "uri": "/data/p1.jpg"}') == [
        UploadEvent("p1", "/data/p1.jpg")
    ]


def test_minio_notification_decodes_the_key_and_reads_metadata() -> None:
    meta = {
        "X-Amz-Meta-Restaurant-Id": "r-7",
        "X-Amz-Meta-Image-Id": "img-9",
        "content-type": "image/jpeg",
    }
    body = json.dumps(minio_notification("r-7/my+photo%C3%A9.jpg", meta=meta)).encode()
    [event] = parse_message(body)
    assert event.uri == "s3://uploads/r-7/my photoé.jpg"
    assert event.image_id == "img-9"
    assert event.restaurant_id == "r-7"
    assert event.source == "s3-event"


def test_minio_notification_without_metadata_uses_the_uri_as_id() -> None:
    [event] = parse_message(json.dumps(minio_notification("a/b.png")).encode())
    assert event.image_id == event.uri == "s3://uploads/a/b.png"
    assert event.restaurant_id is None


def test_other_s3_events_and_test_events_are_ignored() -> None:
    assert (
        parse_message(json.dumps(minio_notification("a.jpg", "s3:ObjectRemoved:Delete")).encode())
        == []
    )
    assert parse_message(b'{"Event": "s3:TestEvent", "Bucket": "uploads"}') == []


def test_several_records_give_several_events() -> None:
    doc = minio_notification("a.jpg")
    doc["Records"].append(minio_notification("b.jpg")["Records"][0])
    assert [e.uri for e in parse_message(json.dumps(doc).encode())] == [
        "s3://uploads/a.jpg",
        "s3://uploads/b.jpg",
    ]


@pytest.mark.parametrize(
    ("body", "reason", "fragment"),
    [
        (b"not json", "bad_json", "not UTF-8 JSON"),
        (b"\xff\xfe", "bad_json", "not UTF-8 JSON"),
        (b"[1, 2]", "bad_event", "JSON object"),
        (b'{"image_id": "x"}', "bad_event", "lacks uri"),
        (b'{"uri": "/a.jpg", "image_id": ""}', "bad_event", "lacks image_id"),
        (b'{"image_id": "x", "uri": 5}', "bad_event", "uri must be a non-empty string"),
        (b'{"image_id": "x", "uri": "/a", "restaurant_id": [1]}', "bad_event", "restaurant_id"),
        (b'{"hello": "world"}', "bad_event", "unknown message shape"),
        (b'{"Records": "x"}', "bad_event", "must be a list"),
        (b'{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {}}]}', "bad_event", "lacks"),
    ],
)
def test_bad_messages_raise_with_a_reason(body: bytes, reason: str, fragment: str) -> None:
    with pytest.raises(EventError, match=fragment) as info:
        parse_message(body)
    assert info.value.reason == reason


def test_overlong_ids_are_refused() -> None:
    with pytest.raises(EventError, match="limit is 512"):
        parse_message(json.dumps({"image_id": "x" * 513, "uri": "/a.jpg"}).encode())
