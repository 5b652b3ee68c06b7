"""declared label vocabulary

A label vocabulary can be declared (`anamnesis labels declare`); once it holds any label, a label
outside it is refused at ingest and over the API, so a typo no longer becomes a class of its own.
The table starts empty: nothing is declared, and every label is accepted as before.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "declaredlabel",
        sa.Column("label", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("actor", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("declared_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("label"),
    )


def downgrade() -> None:
    op.drop_table("declaredlabel")
