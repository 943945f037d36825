"""web self-service

The quarantine self-service page (lmtpfilter/web/): who released a message (quarantine.
released_by: "cli", "web <address>", "link <address>") and the release links already used
(each works once). Written by scripts/new-migration.sh.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 17:53:54.306984
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('release_link_uses',
    sa.Column('nonce', sa.String(length=32), nullable=False),
    sa.Column('quarantine_id', sa.String(length=32), nullable=False),
    sa.Column('used_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('nonce', name=op.f('pk_release_link_uses'))
    )
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.add_column(sa.Column('released_by', sa.String(length=600), server_default='', nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('quarantine', schema=None) as batch_op:
        batch_op.drop_column('released_by')

    op.drop_table('release_link_uses')
