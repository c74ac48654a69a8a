"""The "unknown" route: the model's out-of-distribution verdict on each score.

- ``scores.unknown``: True when the model flagged the photo as none of its classes (the V2
  ``label`` output said ``unknown``), False when it scored it in-distribution, NULL when the
  model has no out-of-distribution score (models older than this revision).
- ``scores.in_distribution_score``: the model's score (higher: more like the classes); NULL
  when the server sent none.

The views are rebuilt on top: ``latest_scores`` and ``image_labels`` carry both columns,
``class_scores`` (what class collections and ``clazzify images --label`` read) leaves flagged
photos out, and the new ``unknown_images`` lists them.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Same SQL dialect subset as 0001: PostgreSQL and SQLite (>= 3.25) both run it.
# ``NOT unknown`` works on a PostgreSQL boolean and on SQLite's 0/1 alike.
VIEWS = {
    "latest_scores": """
        SELECT image_id, model_name, model_version, label, probability, source_uri,
               scored_at, updated_at, writes, unknown, in_distribution_score
        FROM (
            SELECT s.*, ROW_NUMBER() OVER (
                PARTITION BY s.image_id, s.model_name
                ORDER BY s.scored_at DESC, s.model_version DESC
            ) AS rank_
            FROM scores s
        ) ranked
        WHERE rank_ = 1
    """,
    # Class collections: a photo the model flagged as none of its classes is in none of them.
    "class_scores": """
        SELECT l.image_id, COALESCE(i.uri, l.source_uri) AS uri, i.restaurant_id, i.source,
               l.model_name, l.model_version, l.label, l.probability AS top_probability,
               p.class_name, p.probability, l.scored_at
        FROM latest_scores l
        JOIN score_probabilities p
          ON p.image_id = l.image_id AND p.model_name = l.model_name
         AND p.model_version = l.model_version
        LEFT JOIN images i ON i.image_id = l.image_id
        WHERE l.unknown IS NULL OR NOT l.unknown
    """,
    "image_labels": """
        SELECT l.image_id, COALESCE(i.uri, l.source_uri) AS uri, i.restaurant_id, i.source,
               l.model_name, l.model_version, l.label, l.probability, l.scored_at,
               m.label AS manual_label,
               CASE WHEN m.label IS NOT NULL AND m.label <> l.label THEN 1 ELSE 0 END
                 AS disagrees,
               l.unknown, l.in_distribution_score
        FROM latest_scores l
        LEFT JOIN images i ON i.image_id = l.image_id
        LEFT JOIN manual_labels m ON m.image_id = l.image_id
    """,
    # Photos whose latest score the model flagged as none of its classes.
    "unknown_images": """
        SELECT l.image_id, COALESCE(i.uri, l.source_uri) AS uri, i.restaurant_id, i.source,
               l.model_name, l.model_version, l.label AS top_class,
               l.probability AS top_probability, l.in_distribution_score, l.scored_at
        FROM latest_scores l
        LEFT JOIN images i ON i.image_id = l.image_id
        WHERE l.unknown
    """,
}

# The views of 0001, restored by the downgrade.
OLD_VIEWS = {
    "latest_scores": """
        SELECT image_id, model_name, model_version, label, probability, source_uri,
               scored_at, updated_at, writes
        FROM (
            SELECT s.*, ROW_NUMBER() OVER (
                PARTITION BY s.image_id, s.model_name
                ORDER BY s.scored_at DESC, s.model_version DESC
            ) AS rank_
            FROM scores s
        ) ranked
        WHERE rank_ = 1
    """,
    "class_scores": """
        SELECT l.image_id, COALESCE(i.uri, l.source_uri) AS uri, i.restaurant_id, i.source,
               l.model_name, l.model_version, l.label, l.probability AS top_probability,
               p.class_name, p.probability, l.scored_at
        FROM latest_scores l
        JOIN score_probabilities p
          ON p.image_id = l.image_id AND p.model_name = l.model_name
         AND p.model_version = l.model_version
        LEFT JOIN images i ON i.image_id = l.image_id
    """,
    "image_labels": """
        SELECT l.image_id, COALESCE(i.uri, l.source_uri) AS uri, i.restaurant_id, i.source,
               l.model_name, l.model_version, l.label, l.probability, l.scored_at,
               m.label AS manual_label,
               CASE WHEN m.label IS NOT NULL AND m.label <> l.label THEN 1 ELSE 0 END
                 AS disagrees
        FROM latest_scores l
        LEFT JOIN images i ON i.image_id = l.image_id
        LEFT JOIN manual_labels m ON m.image_id = l.image_id
    """,
}

_DROP_ORDER = ("unknown_images", "image_labels", "class_scores", "latest_scores")


def _drop_views() -> None:
    for name in _DROP_ORDER:
        op.execute(f"DROP VIEW IF EXISTS {name}")


def upgrade() -> None:
    # The views read scores.*: drop them first so no dialect trips over a changing table.
    _drop_views()
    with op.batch_alter_table("scores") as batch:
        batch.add_column(sa.Column("unknown", sa.Boolean))
        batch.add_column(sa.Column("in_distribution_score", sa.Float))
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    _drop_views()
    with op.batch_alter_table("scores") as batch:
        batch.drop_column("in_distribution_score")
        batch.drop_column("unknown")
    for name, sql in OLD_VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")
