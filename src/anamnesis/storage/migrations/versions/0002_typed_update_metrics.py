"""typed update metrics: each matrix row names its version; no separate accuracy_row

The learner now stores `UpdateMetrics`: the version's own row of the accuracy matrix carries its
id (written in the transaction that creates the version) and the duplicate `accuracy_row` is gone.
Rewrites the metrics stored before, keeping every figure.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_versions = sa.table("modelversion", sa.column("id", sa.Integer), sa.column("metrics", sa.JSON))


def _rewrite(upgrade: bool) -> None:
    connection = op.get_bind()
    for version_id, metrics in connection.execute(sa.select(_versions.c.id, _versions.c.metrics)).all():
        rows = (metrics or {}).get("accuracy_matrix", {}).get("rows")
        if not rows:
            continue
        own = dict(rows[-1])
        changed = dict(metrics)
        if upgrade:
            own["version_id"] = version_id
            changed.pop("accuracy_row", None)
        else:
            changed["accuracy_row"] = own["accuracy"]
            own["version_id"] = None
        changed["accuracy_matrix"] = {**metrics["accuracy_matrix"], "rows": [*rows[:-1], own]}
        connection.execute(sa.update(_versions).where(_versions.c.id == version_id).values(metrics=changed))


def upgrade() -> None:
    _rewrite(upgrade=True)


def downgrade() -> None:
    _rewrite(upgrade=False)
