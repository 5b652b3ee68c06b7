"""one limit per accuracy drop: the policy's copies move into each stored decision's inputs

The update policy triggered on accuracy drops with its own `max_accuracy_drop` and
`max_estimated_drop`, duplicates of the drift check's flag limits. The policy now uses the check's
limits, recorded in the decision's inputs. Rewrites the decisions stored before so that each
keeps the limits it was made with.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_reports = sa.table("driftreport", sa.column("id", sa.Integer), sa.column("decision", sa.JSON))
_LIMITS = ("max_accuracy_drop", "max_estimated_drop")


def _move(decision: dict[str, Any], source: str, target: str) -> dict[str, Any]:
    moved = {key: decision[source][key] for key in _LIMITS if key in decision.get(source, {})}
    return {
        **decision,
        source: {key: value for key, value in decision[source].items() if key not in _LIMITS},
        target: {**decision.get(target, {}), **moved},
    }


def _rewrite(source: str, target: str) -> None:
    connection = op.get_bind()
    for report_id, decision in connection.execute(sa.select(_reports.c.id, _reports.c.decision)).all():
        if not decision or source not in decision or target not in decision:
            continue
        changed = _move(decision, source, target)
        connection.execute(sa.update(_reports).where(_reports.c.id == report_id).values(decision=changed))


def upgrade() -> None:
    _rewrite("policy", "inputs")


def downgrade() -> None:
    _rewrite("inputs", "policy")
