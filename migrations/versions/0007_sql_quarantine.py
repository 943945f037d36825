"""sql quarantine

[quarantine] store = "sql" (lmtpfilter/quarantine_sql.py): the message bytes in the database,
in zlib-compressed chunks keyed by (quarantine id, sequence), as amavisd-new's SQL quarantine
keeps them (quarantine(partition_tag, mail_id, chunk_ind, mail_text)). Written by
scripts/new-migration.sh. bytea on PostgreSQL, BLOB on SQLite.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 21:01:02.312332
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('quarantine_chunks',
    sa.Column('quarantine_id', sa.String(length=32), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.Column('stored_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('quarantine_id', 'seq', name=op.f('pk_quarantine_chunks'))
    )
    with op.batch_alter_table('quarantine_chunks', schema=None) as batch_op:
        batch_op.create_index('ix_quarantine_chunks_walk', ['seq', 'stored_at', 'quarantine_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('quarantine_chunks', schema=None) as batch_op:
        batch_op.drop_index('ix_quarantine_chunks_walk')

    op.drop_table('quarantine_chunks')
