"""Alembic environment: migrate the connection handed over by ``upgrade_database``.

``clazzify.scoring.schema.upgrade_database`` opens the transaction (and takes the migration
lock) and passes its connection in ``config.attributes["connection"]``. Run by the
``alembic`` command instead, the URL comes from ``sqlalchemy.url`` in its config.
"""

from alembic import context

from clazzify.scoring.database import create_db_engine

config = context.config


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_db_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
