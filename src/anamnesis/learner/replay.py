"""Which stored records an update replays when it draws from the whole labeled history.

Every labeled record is already in the database, so replay need not remember a few hundred
samples as they stream past: at each update it draws a fresh sample of the history, balanced
over periods and, within a period, over classes, with each record's current label.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence

from anamnesis.storage.queries import LabeledRecord


def share_out(total: int, capacities: Sequence[int]) -> list[int]:
    """Splits `total` as evenly as the capacities allow (water-filling); never more than a capacity."""
    shares = [0] * len(capacities)
    open_slots = [i for i, capacity in enumerate(capacities) if capacity > 0]
    remaining = min(total, sum(capacities))
    while remaining > 0 and open_slots:
        each, extra = divmod(remaining, len(open_slots))
        still_open = []
        for rank, index in enumerate(open_slots):
            wanted = each + (1 if rank < extra else 0)
            given = min(wanted, capacities[index] - shares[index])
            shares[index] += given
            remaining -= given
            if shares[index] < capacities[index]:
                still_open.append(index)
        open_slots = still_open
    return shares


def select_replay(history: Sequence[LabeledRecord], *, budget: int, seed: int) -> list[LabeledRecord]:
    """Up to `budget` records of `history`, balanced over periods, then over classes within each."""
    if budget <= 0 or not history:
        return []
    cells: dict[str, dict[str, list[LabeledRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in sorted(history, key=lambda r: r.record_id):
        cells[record.period][record.label].append(record)
    rng = random.Random(seed)
    periods = sorted(cells)
    per_period = share_out(budget, [sum(len(group) for group in cells[p].values()) for p in periods])
    chosen: list[LabeledRecord] = []
    for period, quota in zip(periods, per_period, strict=True):
        labels = sorted(cells[period])
        per_label = share_out(quota, [len(cells[period][label]) for label in labels])
        for label, count in zip(labels, per_label, strict=True):
            chosen += rng.sample(cells[period][label], count)
    return sorted(chosen, key=lambda r: r.record_id)
