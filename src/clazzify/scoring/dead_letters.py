"""Dead letters: messages that can never be scored, kept with the reason and the body."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from clazzify.scoring.schema import dead_letters


@dataclass(frozen=True)
class DeadLetter:
    """A message that can never be scored, and why."""

    reason: str
    detail: str
    body: str
    image_id: str | None = None
    uri: str | None = None



def insert_dead_letters(conn: sa.Connection, letters: Sequence[DeadLetter], now: datetime) -> None:
    """Append ``letters`` inside the caller's transaction."""
    if not letters:
        return
    conn.execute(
        sa.insert(dead_letters),
        [
            {
                "reason": d.reason,
                "detail": d.detail,
                "body": d.body,
                "image_id": d.image_id,
                "uri": d.uri,
                "dead_at": now,
            }
            for d in letters
        ],
    )


def read_dead_letters(engine: Engine, limit: int = 100) -> list[dict[str, Any]]:
    """The newest ``limit`` dead letters, newest first."""
    query = sa.select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]
