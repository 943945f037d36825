"""released host

quarantine.released_host: the [server] hostname of the process that released a message last
(issue 18 item 3: several filter hosts share one PostgreSQL, and any of them may release what
another quarantined). Empty for rows released before, and for rows never released.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 21:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.add_column(sa.Column('released_host', sa.String(length=255),
                                      server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.drop_column('released_host')
