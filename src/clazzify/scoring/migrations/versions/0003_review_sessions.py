"""Review sessions that can be revoked, and login throttling that every replica shares.

- ``review_users.session_generation``: carried in each signed session cookie and checked on
  every request; logging out everywhere or changing the password bumps it, which ends every
  other session of that user at its next request. A new account starts at a random
  generation, so a cookie of a removed account of the same name never matches again.
- ``review_login_throttle``: failed and refused logins per key (``user:NAME`` or
  ``addr:ADDRESS``): how many in a row, when the last one was, and until when the key is
  locked. It lives next to the users so that several replicas of the review app agree.
  Times are seconds since the epoch (a float), the same on SQLite and PostgreSQL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("review_users") as batch:
        batch.add_column(sa.Column("session_generation", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "review_login_throttle",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_at", sa.Float, nullable=False),
        sa.Column("locked_until", sa.Float),
    )


def downgrade() -> None:
    op.drop_table("review_login_throttle")
    with op.batch_alter_table("review_users") as batch:
        batch.drop_column("session_generation")
