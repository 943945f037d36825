"""case-insensitive recipient index

`lmtpfilter log --recipient` matches lower(address). Written by hand: Alembic's autogenerate
skips expression indexes on SQLite, which cannot reflect them (see lmtpfilter/store.py).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 11:59:05.439811
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index('ix_recipient_verdicts_address_lower', 'recipient_verdicts',
                    [sa.text('lower(address)')], unique=False)


def downgrade() -> None:
    op.drop_index('ix_recipient_verdicts_address_lower', table_name='recipient_verdicts')
