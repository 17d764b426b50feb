"""Persona tags, and mark messages whose generation was cut short (cancelled or length limit).

Revision ID: 0002_tags_and_cut_short
Revises: 0001_initial
Create Date: 2026-05-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_tags_and_cut_short"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "persona_tags",
        sa.Column("persona_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(100), nullable=False),
        sa.ForeignKeyConstraint(
            ["persona_id"],
            ["personas.id"],
            name="fk_persona_tags_persona_id_personas",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("persona_id", "tag", name="pk_persona_tags"),
    )
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column("cut_short", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("cut_short")
    op.drop_table("persona_tags")
