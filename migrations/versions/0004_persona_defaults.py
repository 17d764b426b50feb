"""A persona's own defaults: sampling settings, stop strings and a greeting, as one JSON record.

One nullable column on the persona row (NULL: nothing set) rather than a table: the record is
small, always read and written whole, and validated by persona.engine.config.PersonaDefaults.

Revision ID: 0004_persona_defaults
Revises: 0003_tensors_apart
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_persona_defaults"
down_revision = "0003_tensors_apart"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("personas") as batch:
        batch.add_column(sa.Column("defaults_json", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("personas") as batch:
        batch.drop_column("defaults_json")
