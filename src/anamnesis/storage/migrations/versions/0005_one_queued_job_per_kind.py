"""one queued job per kind

A retraining or drift check asked for while one of its kind is still waiting would only repeat it;
a partial unique index now refuses it whatever the races between processes. Jobs queued twice
before keep the oldest of each kind queued; the later ones are marked failed, with the reason.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_INDEX = "uq_job_one_queued_per_kind"
_QUEUED = sa.text("status = 'queued'")
_jobs = sa.table(
    "job",
    sa.column("id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("status", sa.String),
    sa.column("error", sa.Text),
)


def upgrade() -> None:
    connection = op.get_bind()
    queued = connection.execute(
        sa.select(_jobs.c.id, _jobs.c.kind).where(_jobs.c.status == "queued").order_by(_jobs.c.id)
    ).all()
    oldest: dict[str, int] = {}
    for job_id, kind in queued:
        if kind in oldest:
            connection.execute(
                sa.update(_jobs)
                .where(_jobs.c.id == job_id)
                .values(status="failed", error=f"not run: job {oldest[kind]} of the same kind was already queued")
            )
        else:
            oldest[kind] = job_id
    op.create_index(_INDEX, "job", ["kind"], unique=True, sqlite_where=_QUEUED, postgresql_where=_QUEUED)


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="job")
