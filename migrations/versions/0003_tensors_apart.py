"""Keep tensors in their own table, so reading prompt metadata never walks through tensor bytes.

SQLite stores a row's columns in one record; with a 46 KB tensor in the middle of it, listing
10,000 personas read most of a 470 MB file. The metadata rows are now small and dense.

Revision ID: 0003_tensors_apart
Revises: 0002_tags_and_cut_short
Create Date: 2026-05-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_tensors_apart"
down_revision = "0002_tags_and_cut_short"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompt_tensors",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["prompt_versions.id"],
            name="fk_prompt_tensors_version_id_prompt_versions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", name="pk_prompt_tensors"),
    )
    op.execute(
        "INSERT INTO prompt_tensors (version_id, data) SELECT id, tensor FROM prompt_versions"
    )
    with op.batch_alter_table("prompt_versions") as batch:
        batch.drop_column("tensor")


def downgrade() -> None:
    with op.batch_alter_table("prompt_versions") as batch:
        batch.add_column(sa.Column("tensor", sa.LargeBinary(), nullable=True))
    op.execute(
        "UPDATE prompt_versions SET tensor = (SELECT data FROM prompt_tensors WHERE version_id = prompt_versions.id)"
    )
    with op.batch_alter_table("prompt_versions") as batch:
        batch.alter_column("tensor", existing_type=sa.LargeBinary(), nullable=False)
    op.drop_table("prompt_tensors")
