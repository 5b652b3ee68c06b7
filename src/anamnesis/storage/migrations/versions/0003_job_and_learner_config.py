"""storage vocabulary: trainingrun -> job, modelversion.strategy -> learner_config

`trainingrun` held drift checks as well as retrainings: it is `job` now, and a version's link to the
job that trained it is `job_id`. `strategy` held the whole learner configuration: `learner_config`.
Renames only; every row is kept. Audit events name the entity `job` from now on, older ones too.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_INDEXED = ("created_at", "kind", "status")
_audit = sa.table("auditevent", sa.column("entity", sa.String))


def _rename(old_table: str, new_table: str, old_link: str, new_link: str, old_config: str, new_config: str) -> None:
    for column in _INDEXED:
        op.drop_index(f"ix_{old_table}_{column}", table_name=old_table)
    op.rename_table(old_table, new_table)
    for column in _INDEXED:
        op.create_index(f"ix_{new_table}_{column}", new_table, [column], unique=False)
    op.alter_column("modelversion", old_link, new_column_name=new_link)
    op.alter_column("modelversion", old_config, new_column_name=new_config)


def upgrade() -> None:
    _rename("trainingrun", "job", "training_run_id", "job_id", "strategy", "learner_config")
    op.execute(sa.update(_audit).where(_audit.c.entity == "training_run").values(entity="job"))


def downgrade() -> None:
    _rename("job", "trainingrun", "job_id", "training_run_id", "learner_config", "strategy")
    op.execute(sa.update(_audit).where(_audit.c.entity == "job").values(entity="training_run"))
