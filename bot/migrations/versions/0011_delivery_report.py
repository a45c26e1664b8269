"""delivery reports

Delivery reports (Twilio status callbacks) that arrive before the send is recorded, kept
until it is.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 14:50:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db.models

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'delivery_report',
        sa.Column('channel', sa.String(), nullable=False),
        sa.Column('provider_id', sa.String(), nullable=False),
        sa.Column('status', sa.String(), nullable=False),
        sa.Column('meta', sa.JSON(), nullable=True),
        sa.Column('error', sa.String(), nullable=True),
        sa.Column('received_at', bot.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('channel', 'provider_id'),
    )
    op.create_index(op.f('ix_delivery_report_received_at'), 'delivery_report',
                    ['received_at'])


def downgrade() -> None:
    op.drop_index(op.f('ix_delivery_report_received_at'), table_name='delivery_report')
    op.drop_table('delivery_report')
