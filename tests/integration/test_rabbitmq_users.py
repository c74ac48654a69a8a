"""The RabbitMQ users of the manifests, on a real broker: each service's permissions (the
ConfigMap clazzify-rabbitmq-users the setup Job applies) let it do its job and refuse the
rest. Runs in a vhost of its own, made and removed with rabbitmqctl."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

from tests.components.test_manifests import rabbitmq_permissions, render

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


def rabbitmqctl(*args: str) -> None:
    out = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"rabbitmqctl {args[0]} failed: {out.stderr or out.stdout}"


@pytest.fixture(scope="module")
def broker() -> Iterator[dict[str, tuple[str, str]]]:
    """A fresh vhost with the manifests' topology and users: {secret name: (user, password)}."""
    if not shutil.which("rabbitmqctl"):
        pytest.skip("rabbitmqctl not on PATH: this test creates users on the local broker")
    vhost = f"clazzify-users-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    users: dict[str, tuple[str, str]] = {}
    try:
        admin = connect(vhost, "guest", "guest")
        ch = admin.channel()  # the setup Job's topology
        ch.exchange_declare("clazzify.uploads", exchange_type="direct", durable=True)
        ch.queue_declare("clazzify.uploads", durable=True)
        ch.queue_declare("clazzify.uploads.dead", durable=True)
        ch.queue_declare("other.queue", durable=False)
        ch.queue_bind("clazzify.uploads", "clazzify.uploads", routing_key="uploads")
        admin.close()
        for secret, (configure, write, read) in rabbitmq_permissions(render("local")).items():
            user, password = f"{secret}-{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
            rabbitmqctl("add_user", user, password)
            rabbitmqctl("set_permissions", "-p", vhost, user, configure, write, read)
            users[secret] = (user, password)
        yield {"vhost": vhost, **users}
    finally:
        for user, _ in users.values():
            subprocess.run(["rabbitmqctl", "delete_user", user], capture_output=True, timeout=60)
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)


def connect(vhost: str, user: str, password: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(
        f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{HOST}:5672/{quote(vhost, safe='')}"))


def refused(broker, secret: str, action) -> bool:
    """Whether the broker closes the channel with ACCESS_REFUSED (403) for ``action``."""
    conn = connect(broker["vhost"], *broker[secret])
    try:
        action(conn.channel())
    except ChannelClosedByBroker as e:
        assert e.reply_code == 403, e
        return True
    finally:
        conn.close()
    return False


def publish(ch, exchange: str, routing_key: str, body: bytes) -> None:
    """Publish and wait for the broker's confirm, so a refusal surfaces here."""
    ch.confirm_delivery()
    ch.basic_publish(exchange, routing_key, body)


def test_minio_may_publish_events_and_nothing_else(broker):
    def send_event(ch):
        ch.exchange_declare("clazzify.uploads", exchange_type="direct", durable=True)
        publish(ch, "clazzify.uploads", "uploads", b'{"Records": []}')

    assert not refused(broker, "clazzify-rabbitmq-minio", send_event)
    assert refused(broker, "clazzify-rabbitmq-minio", lambda ch: ch.basic_get("clazzify.uploads"))
    assert refused(broker, "clazzify-rabbitmq-minio", lambda ch: ch.queue_purge("clazzify.uploads"))
    assert refused(broker, "clazzify-rabbitmq-minio", lambda ch: ch.exchange_declare("evil", durable=True))


def test_the_worker_consumes_and_dead_letters_and_nothing_else(broker):
    def work(ch):
        ch.queue_declare("clazzify.uploads", durable=True)  # the worker declares its topology
        ch.queue_declare("clazzify.uploads.dead", durable=True)
        publish(ch, "", "clazzify.uploads.dead", b"dead letter")
        ch.basic_get("clazzify.uploads", auto_ack=False)

    assert not refused(broker, "clazzify-rabbitmq-worker", work)
    assert refused(broker, "clazzify-rabbitmq-worker", lambda ch: ch.basic_get("clazzify.uploads.dead"))
    assert refused(broker, "clazzify-rabbitmq-worker", lambda ch: ch.basic_get("other.queue"))
    assert refused(broker, "clazzify-rabbitmq-worker",
                   lambda ch: publish(ch, "clazzify.uploads", "uploads", b"forged event"))
    assert refused(broker, "clazzify-rabbitmq-worker", lambda ch: ch.queue_declare("other.new", durable=True))


def test_keda_reads_the_queue_length_and_writes_nothing(broker):
    """KEDA's AMQP scaler needs read on the queue, and RabbitMQ's read also covers get and
    purge (docs/security.md says so); it may not publish, delete or touch other queues."""
    def length(ch):
        ch.queue_declare("clazzify.uploads", passive=True)

    assert not refused(broker, "clazzify-rabbitmq-keda", length)
    assert refused(broker, "clazzify-rabbitmq-keda", lambda ch: publish(ch, "", "clazzify.uploads", b"x"))
    assert refused(broker, "clazzify-rabbitmq-keda", lambda ch: ch.basic_get("clazzify.uploads.dead"))
    assert refused(broker, "clazzify-rabbitmq-keda", lambda ch: ch.queue_delete("clazzify.uploads"))
