"""erasure (customers erased on request, as counts only) and survey answers (CSAT, NPS)

Revision ID: 0009
Revises: 0005
Create Date: 2026-12-07 03:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import bot.db.models

revision: str = '0009'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'erasure',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('erased_at', bot.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column('rows', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_table(
        'survey_answer',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('customer_id', sa.Integer(), nullable=False),
        sa.Column('conversation_id', sa.Integer(), nullable=True),
        sa.Column('kind', sa.String(), nullable=False),
        sa.Column('score', sa.Integer(), nullable=False),
        sa.Column('source', sa.String(), nullable=False),
        sa.Column('answered_at', bot.db.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['conversation_id'], ['conversation.id'], ),
        sa.ForeignKeyConstraint(['customer_id'], ['customer.id'], ),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_survey_answer_answered', 'survey_answer', ['answered_at', 'kind'])
    op.create_index(op.f('ix_survey_answer_customer_id'), 'survey_answer', ['customer_id'])


def downgrade() -> None:
    op.drop_index(op.f('ix_survey_answer_customer_id'), table_name='survey_answer')
    op.drop_index('ix_survey_answer_answered', table_name='survey_answer')
    op.drop_table('survey_answer')
    op.drop_table('erasure')
