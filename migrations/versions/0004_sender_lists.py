"""sender lists

The per-recipient sender allow/bypass/block lists (`lmtpfilter senders`,
lmtpfilter/senderlists.py). Written by scripts/new-migration.sh; reduced to this table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 15:09:12.662238
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('sender_lists',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('recipient', sa.String(length=512), nullable=False),
    sa.Column('sender', sa.String(length=512), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('score', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sender_lists')),
    sa.UniqueConstraint('recipient', 'sender', name=op.f('uq_sender_lists_recipient'))
    )


def downgrade() -> None:
    op.drop_table('sender_lists')
