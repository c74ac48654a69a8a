"""Fixtures shared by the unit tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from clazzify.scoring.scores import ScoreRepository


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[ScoreRepository]:
    """A scores database on SQLite in the test's folder."""
    r = ScoreRepository.open(f"sqlite:///{tmp_path}/scores.db")
    yield r
    r.close()
