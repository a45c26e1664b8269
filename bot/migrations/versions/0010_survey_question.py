"""survey questions

The satisfaction and recommend questions playbook steps ask, so a lone number the customer
sends next is recorded as the answer.

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-07 14:45:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db.models

revision: str = '0010'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'survey_question',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('customer_id', sa.Integer(), nullable=False),
        sa.Column('conversation_id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(), nullable=False),
        sa.Column('source', sa.String(), nullable=False),
        sa.Column('playbook', sa.String(), nullable=True),
        sa.Column('asked_at', bot.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('answered_at', bot.db.models.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversation.id'], ),
        sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], ),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_survey_question_customer', 'survey_question',
                    ['customer_id', 'asked_at'])


def downgrade() -> None:
    op.drop_index('ix_survey_question_customer', table_name='survey_question')
    op.drop_table('survey_question')
