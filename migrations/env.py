"""Alembic environment for lmtpfilter: the schema is only ever changed through here.

Run through `lmtpfilter db upgrade`, which sets sqlalchemy.url from the config file.
render_as_batch makes ALTER TABLE work on SQLite (copy-and-move), and the models' MetaData
carries a naming convention so that constraints have the same names everywhere.
"""

from __future__ import annotations

from alembic import context

from lmtpfilter.store import Base, make_engine

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"),
                      target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=True, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
