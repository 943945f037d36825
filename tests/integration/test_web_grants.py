"""The web page's least-privileged PostgreSQL role, as the README grants it: every action of
the page works with those grants alone, and the role can do nothing else that matters
(read the verdicts, delete quarantine rows, change the filter's tables)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session

from lmtpfilter import store as st
from lmtpfilter.web.links import ReleaseLinks
from tests.harness.postgres import Postgres
from tests.lmtp_tools import FakeDownstream
from tests.unit.test_web_access import ADMIN, ALICE, KEY, Site, csrf_of, listed, log_in, make_config

pytestmark = pytest.mark.integration
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_grants(database: str, password: str) -> str:
    section = README.read_text().split("### Quarantine self-service on the web", 1)[1]
    found = re.search(r"```sql\n(.*?)```", section, re.S)
    assert found, "the README no longer gives the page's PostgreSQL role"
    return (found.group(1).replace("PASSWORD '...'", f"PASSWORD '{password}'")
            .replace("DATABASE lmtpfilter", f"DATABASE {database}"))


@pytest.mark.parametrize("kept_in", ["files", "sql"])  # [quarantine] store
async def test_the_readme_grants_are_enough_and_no_more(
        postgres: Postgres, tmp_path: Path, fake: FakeDownstream, kept_in: str) -> None:
    database = f"webgrants_{kept_in}"
    owner_url = postgres.create_database(database)
    st.upgrade(owner_url)
    postgres.psql(database, readme_grants(database, "webpw"))
    web_url = f"postgresql+psycopg://lmtpfilter_web:webpw@127.0.0.1:{postgres.port}/{database}"
    config = make_config(tmp_path, fake.address, kept_in, base_url="http://web.test")
    owner, web_store = st.Store(owner_url), st.Store(web_url)
    try:
        web_store.check_schema()
        site = Site(config, owner, fake)
        one, two, three = (site.add([ALICE], s) for s in ("one", "two", "three"))
        virus = site.add([ALICE], "vir", reason="virus")
        linked = site.add([ALICE], "four")
        site.store = web_store  # from here on, the page has only the README's grants
        async with site.client() as client:
            assert (await log_in(client, ALICE)).status_code == 303
            page = await client.get("/")
            assert page.status_code == 200 and len(listed(page.text)) == 5
            detail = await client.get(f"/m/{one}")
            assert detail.status_code == 200
            csrf = csrf_of(detail.text)
            assert (await client.post(f"/m/{one}/release", data={"csrf": csrf})).status_code \
                == 200
            assert (await client.post(f"/m/{two}/delete", data={"csrf": csrf})).status_code \
                == 200
            bulk = await client.post("/bulk", data={"csrf": csrf, "action": "release",
                                                    "id": [three]})
            assert bulk.status_code == 200
            saved = await client.post("/settings", data={"csrf": csrf, "junk_destiny": "inbox",
                                                         "tag2_level": "6"})
            assert saved.status_code == 200 and 'id="result"' in saved.text, saved.text
        async with site.client() as client:
            await log_in(client, ADMIN)
            found = await client.get("/?q=vir")
            assert listed(found.text) == [virus]
            csrf = csrf_of((await client.get(f"/m/{virus}")).text)
            assert (await client.post(f"/m/{virus}/release", data={"csrf": csrf})
                    ).status_code == 200
        path = ReleaseLinks(KEY, "http://web.test", 3600).make(linked, ALICE).removeprefix(
            "http://web.test")
        async with site.client() as client:
            confirm = await client.get(path)
            assert confirm.status_code == 200
            assert (await client.post(path, data={"csrf": csrf_of(confirm.text)})
                    ).status_code == 200
        rows = owner.transaction(lambda s: {q.id: (q.released_by, q.expired_at is not None)
                                            for q in s.query(st.QuarantineRecord)})
        assert rows[one] == (f"web {ALICE}", False) and rows[two][1] is True
        assert rows[virus] == (f"web {ADMIN}", False) and rows[linked] == (f"link {ALICE}", False)
        # ... and nothing more.
        for forbidden in ("SELECT * FROM recipient_verdicts", "DELETE FROM quarantine",
                          "UPDATE quarantine SET sender = 'x'", "SELECT * FROM notifications",
                          "INSERT INTO sender_lists (recipient, sender, action, created_at, "
                          "note) VALUES ('.', '<>', 'allow', now(), '')"):
            def attempt(session: Session, sql: str = forbidden) -> object:
                return session.execute(text(sql))
            with pytest.raises(ProgrammingError, match="permission denied"):
                web_store.transaction(attempt)
    finally:
        web_store.close()
        owner.close()
        postgres.drop_database(database)
        postgres.psql("postgres", "DROP ROLE IF EXISTS lmtpfilter_web")  # roles are server-wide
