"""Scores, class probabilities, images, manual labels, dead letters and the query views.

Revision ID: 0001
Revises:
Create Date: 2025-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The views use only SQL that PostgreSQL and SQLite (>= 3.25, window functions) share.
VIEWS = {
    # The newest score of each photo per model name: when a new model version starts
    # scoring, its rows take over photo by photo (scored_at is the first write).
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
    # One row per photo and class of its latest score, with the photo's metadata.
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
    # One row per photo: latest prediction next to the manual label, if any.
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


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("image_id", sa.String(512), primary_key=True),
        sa.Column("uri", sa.String(2048), nullable=False),
        sa.Column("restaurant_id", sa.String(512)),
        sa.Column("source", sa.String(512)),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_images_restaurant_id", "images", ["restaurant_id"])
    op.create_table(
        "scores",
        sa.Column("image_id", sa.String(512), primary_key=True),
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("model_version", sa.String(64), primary_key=True),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("source_uri", sa.String(2048), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("writes", sa.Integer, nullable=False, server_default="1"),
    )
    op.create_index("ix_scores_model_label", "scores", ["model_name", "model_version", "label"])
    op.create_table(
        "score_probabilities",
        sa.Column("image_id", sa.String(512), primary_key=True),
        sa.Column("model_name", sa.String(128), primary_key=True),
        sa.Column("model_version", sa.String(64), primary_key=True),
        sa.Column("class_name", sa.String(128), primary_key=True),
        sa.Column("probability", sa.Float, nullable=False),
    )
    op.create_index(
        "ix_score_probabilities_class",
        "score_probabilities",
        ["model_name", "class_name", "probability"],
    )
    op.create_table(
        "manual_labels",
        sa.Column("image_id", sa.String(512), primary_key=True),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("labelled_by", sa.String(128)),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("image_id", sa.String(512)),
        sa.Column("uri", sa.String(2048)),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("dead_at", sa.DateTime(timezone=True), nullable=False),
    )
    for name, sql in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {sql}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for table in ("dead_letters", "manual_labels", "score_probabilities", "scores", "images"):
        op.drop_table(table)
