"""Moderators' review: label history, review users, keyset-pagination indexes.

``manual_labels`` stays the current label of each photo (last write wins); every write to
it also appends a row to ``label_history`` (who, when, old label, new label, action), so
nothing is overwritten without a trace. The two ``ix_scores_queue_*`` indexes let the review
queues page by ``(probability, image_id)`` without sorting the scores table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "label_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image_id", sa.String(512), nullable=False),
        sa.Column("old_label", sa.String(128)),
        sa.Column("new_label", sa.String(128)),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("labelled_by", sa.String(128)),
        sa.Column("labelled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("batch_id", sa.String(32), nullable=False),
        sa.Column("undoes", sa.String(32)),
    )
    op.create_index("ix_label_history_image", "label_history", ["image_id", "id"])
    op.create_index("ix_label_history_user", "label_history", ["labelled_by", "id"])
    op.create_index("ix_label_history_time", "label_history", ["labelled_at"])
    op.create_index("ix_label_history_undoes", "label_history", ["undoes"])
    op.create_table(
        "review_users",
        sa.Column("username", sa.String(128), primary_key=True),
        sa.Column("password_hash", sa.String(256), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    # The label queue index starts with the old (model_name, model_version, label) index,
    # which it replaces.
    op.drop_index("ix_scores_model_label", table_name="scores")
    op.create_index(
        "ix_scores_queue_label",
        "scores",
        ["model_name", "model_version", "label", "probability", "image_id"],
    )
    op.create_index(
        "ix_scores_queue_probability",
        "scores",
        ["model_name", "model_version", "probability", "image_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_scores_queue_probability", table_name="scores")
    op.drop_index("ix_scores_queue_label", table_name="scores")
    op.create_index("ix_scores_model_label", "scores", ["model_name", "model_version", "label"])
    op.drop_table("review_users")
    for name in ("undoes", "time", "user", "image"):
        op.drop_index(f"ix_label_history_{name}", table_name="label_history")
    op.drop_table("label_history")
