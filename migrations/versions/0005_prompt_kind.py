"""The kind of each stored prompt: `soft` (input embeddings) or `deep` (keys and values at every
layer, persona.prompt.deep).

One column, so that listing the library says which personas a backend can run without reading a
tensor; every prompt stored before this revision is a soft one.

Revision ID: 0005_prompt_kind
Revises: 0004_persona_defaults
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_prompt_kind"
down_revision = "0004_persona_defaults"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prompt_versions") as batch:
        batch.add_column(sa.Column("kind", sa.String(10), nullable=False, server_default="soft"))


def downgrade() -> None:
    with op.batch_alter_table("prompt_versions") as batch:
        batch.drop_column("kind")
