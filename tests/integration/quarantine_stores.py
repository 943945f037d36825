"""The quarantine test matrix: [quarantine] store = "files", "sql" on SQLite, "sql" on
PostgreSQL (issue 18 item 1). A test module runs on all three by taking the `backend`
fixture (module-scoped, so one filter process per store and module) and building its config
with `backend.config(text)`; it reads the database and the stored messages through these
helpers, whichever store it runs on.
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from lmtpfilter import config as cfg
from tests.harness.postgres import Postgres

STORES = ["files", "sqlite-sql", "postgresql-sql"]
_names = itertools.count()


@dataclass(frozen=True)
class Backend:
    kind: str  # one of STORES
    postgres: Postgres | None = None

    @property
    def sql(self) -> bool:
        return self.kind != "files"

    def config(self, text_: str) -> str:
        """A filter_config() text on this store: [quarantine] store, and on PostgreSQL a
        database of its own for each call (each filter process)."""
        if self.sql:
            text_ = text_.replace("[quarantine]\n", '[quarantine]\nstore = "sql"\n', 1)
        if self.postgres is not None:
            url = self.postgres.create_database(f"q{next(_names)}")
            text_ = text_.replace('url = "sqlite:///{workdir}/lmtpfilter.db"', f'url = "{url}"')
        return text_


@pytest.fixture(scope="module", params=STORES)
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "postgresql-sql":
        return Backend(request.param, request.getfixturevalue("postgres"))
    return Backend(request.param)


def database_url(config_path: Path) -> str:
    return cfg.load(str(config_path)).database.url


def db(config_path: Path, query: str) -> list[tuple[object, ...]]:
    """A query on a filter's database, whichever it is; datetimes as UTC ISO text (as
    SQLite's) so that tests compare them alike."""
    engine = create_engine(database_url(config_path))
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(query)).all()
    finally:
        engine.dispose()
    return [tuple(_plain(v) for v in row) for row in rows]


def _plain(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(" ")
    return value


def stored_ids(config_path: Path) -> set[str]:
    """The IDs of the messages the quarantine holds: its files, or its chunks."""
    config = cfg.load(str(config_path))
    if config.quarantine.store == "sql":
        return {str(qid) for (qid,) in db(config_path,
                                          "select quarantine_id from quarantine_chunks "
                                          "where seq = 0")}
    return {p.name.split(".")[0] for p in config.quarantine.directory.rglob("*.eml.gz")}
