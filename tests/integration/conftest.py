"""The integration tier is slow as a whole: every module starts real services or servers
(PostgreSQL databases, RabbitMQ queues, MLflow stores, moto's S3 server, model servers,
workers, a browser), so ``make test-fast`` (``-m "not slow"``) leaves all of it out."""

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.slow)
