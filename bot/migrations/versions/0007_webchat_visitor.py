"""web chat visitors: contact details, signed identity, last seen, emailed replies

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-07 03:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import bot.db.models

revision: str = '0007'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'webchat_visitor',
        sa.Column('visitor', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('customer_ref', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column('email', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column('phone', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column('verified', sa.Boolean(), nullable=False),
        sa.Column('page', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column('seen_at', bot.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column('emailed_through', sa.Integer(), nullable=False),
        sa.Column('updated_at', bot.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('visitor'),
    )


def downgrade() -> None:
    op.drop_table('webchat_visitor')
