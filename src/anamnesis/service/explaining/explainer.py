"""One explain request: the served prediction of each record, its attributions, its similar past patients,
and the audit event that records who asked about which records (by content hash, never the text).

The predictions come from the micro-batcher, as POST /v1/predict's do (same runtime, same embedding);
they are not stored as predictions, so that explanations do not count in the drift windows. The
attributions come from the version's PyTorch model (learner.attribution, captum: imported here on the
first explanation only) in one thread of their own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from anamnesis.learner.neighbours import EXACT_SEARCH_LIMIT, Neighbour, agreement
from anamnesis.service.auth import Principal
from anamnesis.service.explaining.index import IndexStatus
from anamnesis.service.explaining.resources import ExplainResources
from anamnesis.service.predicting.batcher import ItemResult
from anamnesis.service.predicting.errors import DatabaseUnavailableError
from anamnesis.service.predicting.runtime import LoadedModel
from anamnesis.service.predicting.uncertainty import Uncertainty, assess
from anamnesis.service.schemas import (
    AttributionPublic,
    CompletenessPublic,
    ExplainMethodPublic,
    ExplainRequest,
    ExplainResponse,
    ExplanationPublic,
    FieldAttributionPublic,
    NeighbourIndexPublic,
    NeighbourPublic,
    PredictItem,
    SimilarPatientsPublic,
    WordAttributionPublic,
)
from anamnesis.service.state import ServiceState
from anamnesis.storage.ingest import prepare_record
from anamnesis.storage.models import ApiRole, AuditAction
from anamnesis.storage.queries import labeled_records
from anamnesis.storage.repository import record_audit_event
from anamnesis.storage.schemas import RecordCreate

if TYPE_CHECKING:
    from anamnesis.learner.attribution import Attribution
    from anamnesis.learner.modeling import ModelBundle

SEARCH = (
    "exact cosine search (numpy) over the version's training records; "
    f"an approximate index is the path beyond ~{EXACT_SEARCH_LIMIT:,}"
)


NEIGHBOUR_AGREEMENT_BELOW = 0.5
"""A prediction most of whose similar past patients were labeled otherwise is uncertain."""


def neighbours_disagree(neighbours: Sequence[Neighbour], label: str) -> str | None:
    """Why the similar past patients speak against `label`; None when most of them agree (or there are none)."""
    share = agreement(neighbours, label)
    if share is None or share >= NEIGHBOUR_AGREEMENT_BELOW:
        return None
    agreeing = round(share * len(neighbours))
    return f"only {agreeing} of the {len(neighbours)} most similar past patients were labeled {label}"


@dataclass(frozen=True)
class _Private:
    note: str
    patient_hash: str | None


def _attribute(
    bundle: ModelBundle,
    items: Sequence[PredictItem],
    targets: Sequence[tuple[str, str | None]],
    *,
    max_length: int,
    n_steps: int,
) -> list[Attribution]:
    from anamnesis.learner.attribution import AttributionTarget, attribute_records  # captum: on first use only

    return attribute_records(
        bundle,
        [
            AttributionTarget(note=item.note, fields=item.fields.to_json(), label=label, compare_to=compare_to)
            for item, (label, compare_to) in zip(items, targets, strict=True)
        ],
        max_length=max_length,
        n_steps=n_steps,
    )


def _method(n_steps: int) -> ExplainMethodPublic:
    from anamnesis.learner.attribution import BASELINE, COMPLETENESS_TOLERANCE, INTEGRATION, METHOD

    return ExplainMethodPublic(
        method=METHOD,
        library="captum",
        model="pytorch",
        baseline=BASELINE,
        integration=INTEGRATION,
        n_steps=n_steps,
        tolerance=COMPLETENESS_TOLERANCE,
    )


def _attribution_public(attribution: Attribution) -> AttributionPublic:
    explained = f"logit of {attribution.label}"
    if attribution.compare_to is not None:
        explained += f" minus logit of {attribution.compare_to}"
    check = attribution.completeness
    return AttributionPublic(
        explained=explained,
        label=attribution.label,
        compare_to=attribution.compare_to,
        words=[
            WordAttributionPublic(text=w.text, start=w.start, end=w.end, attribution=round(w.attribution, 6))
            for w in attribution.words
        ],
        fields=[
            FieldAttributionPublic(
                name=f.name,
                attribution=round(f.attribution, 6),
                from_text=None if f.from_text is None else round(f.from_text, 6),
                from_features=None if f.from_features is None else round(f.from_features, 6),
            )
            for f in attribution.fields
        ],
        other=round(attribution.other, 6),
        completeness=CompletenessPublic(
            output=check.output,
            baseline_output=check.baseline_output,
            attribution_sum=check.attribution_sum,
            delta=check.delta,
            within_tolerance=check.within_tolerance,
        ),
        note_chars_read=attribution.note_chars_read,
        truncated=attribution.truncated,
    )


def _neighbour_public(neighbour: Neighbour, private: dict[int, _Private] | None) -> NeighbourPublic:
    record = neighbour.record
    shown = NeighbourPublic(
        label=record.label, period=record.period, site=record.site, similarity=round(neighbour.similarity, 6)
    )
    if private is None:
        return shown
    kept = private.get(record.record_id)
    return shown.model_copy(
        update={
            "record_id": record.record_id,
            "note": kept.note if kept else None,
            "patient_hash": kept.patient_hash if kept else record.patient_hash,
        }
    )


def _index_public(status: IndexStatus) -> NeighbourIndexPublic:
    detail = status.error
    if status.state == "building":
        done = f"{status.embedded} of {status.records}" if status.records is not None else "reading the records"
        detail = f"building ({done}); ask again shortly"
    return NeighbourIndexPublic(
        state=status.state,
        records=status.records,
        embedded=status.embedded,
        build_s=status.build_s,
        search=SEARCH,
        detail=detail,
    )


def _private_records(state: ServiceState, record_ids: list[int]) -> dict[int, _Private]:
    with Session(state.engine) as session:
        rows = labeled_records(session, record_ids=record_ids)
    return {row.record_id: _Private(note=row.note, patient_hash=row.patient_hash) for row in rows}


def _audit(state: ServiceState, principal: Principal, explanation_id: str, details: dict[str, object]) -> None:
    with Session(state.engine) as session:
        record_audit_event(
            session,
            action=AuditAction.explain,
            actor=principal.actor,
            entity="explanation",
            entity_id=explanation_id,
            details=details,
        )


async def explain(
    state: ServiceState,
    resources: ExplainResources,
    request: ExplainRequest,
    principal: Principal,
    model: LoadedModel,
) -> ExplainResponse:
    """Explains the request's records on `model` (the served one, its `compare_to` checked by the caller)."""
    if state.health.down:
        raise DatabaseUnavailableError("the database is unavailable; explanations cannot be audited")
    resources.limiter.take(principal.key_id, len(request.records))
    started = time.perf_counter()
    items = request.records
    predictions: list[ItemResult] = await state.batcher.predict(
        [(item.note, item.fields.to_json()) for item in items], model
    )
    targets: list[tuple[str, str | None]] = [(p.label, None) for p in predictions]
    contrasted = [i for i, p in enumerate(predictions) if request.compare_to not in (None, p.label)]
    targets += [(predictions[i].label, request.compare_to) for i in contrasted]
    if request.neighbours > 0:
        resources.indexes.status(model)  # a version's first explanation starts its index now, beside the integrals
    n_steps = state.settings.explain_steps
    loop = asyncio.get_running_loop()
    attributions = await loop.run_in_executor(
        resources.executor,
        lambda: _attribute(
            model.bundle,
            [*items, *(items[i] for i in contrasted)],
            targets,
            max_length=model.max_length,
            n_steps=n_steps,
        ),
    )
    contrasts: dict[int, Attribution] = dict(zip(contrasted, attributions[len(items) :], strict=True))

    neighbours: list[list[Neighbour]] | None = None
    index_status: IndexStatus | None = None
    if request.neighbours > 0:
        index_status = await resources.indexes.wait(model, state.settings.explain_index_wait_s)
        if index_status.index is not None:
            queries = np.stack([p.embedding.astype(np.float32) for p in predictions])
            neighbours = index_status.index.search(queries, request.neighbours)
    reveal = principal.allows(ApiRole.admin)
    shown_ids = sorted({n.record.record_id for found in neighbours or [] for n in found})
    private = await run_in_threadpool(_private_records, state, shown_ids) if reveal and shown_ids else None
    if reveal and private is None:
        private = {}

    uncertainty: list[Uncertainty] = [
        assess(p.confidence, uncertain_below=state.settings.uncertain_below).also(
            neighbours_disagree(neighbours[i], p.label) if neighbours is not None else None
        )
        for i, p in enumerate(predictions)
    ]

    explanation_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    hashes = [
        prepare_record(
            RecordCreate(**item.model_dump(exclude={"fields"}), fields=item.fields, label=None),
            patient_key=state.patient_key,
            ingested_at=now,
        ).content_hash
        for item in items
    ]
    details: dict[str, object] = {
        "model_version": model.version_id,
        "runtime": str(model.kind),
        "records": len(items),
        "input_hashes": hashes,
        "labels": [p.label for p in predictions],
        "compare_to": request.compare_to,
        "neighbours": request.neighbours,
        "n_steps": n_steps,
        "ms": round((time.perf_counter() - started) * 1000, 1),
    }
    if reveal and shown_ids:
        details["revealed_records"] = shown_ids  # whose text an admin key was shown
    await run_in_threadpool(_audit, state, principal, explanation_id, details)

    return ExplainResponse(
        explanation_id=explanation_id,
        model_version=model.version_id,
        runtime=str(model.kind),
        method=_method(n_steps),
        neighbour_index=_index_public(index_status) if index_status is not None else None,
        explanations=[
            ExplanationPublic(
                label=prediction.label,
                confidence=prediction.confidence,
                probabilities=prediction.probabilities,
                uncertain=uncertainty[i].uncertain,
                uncertain_reason=uncertainty[i].reason,
                attribution=_attribution_public(attributions[i]),
                contrast=_attribution_public(contrasts[i]) if i in contrasts else None,
                similar=(
                    SimilarPatientsPublic(
                        neighbours=[_neighbour_public(n, private) for n in neighbours[i]],
                        agreement=agreement(neighbours[i], prediction.label),
                    )
                    if neighbours is not None
                    else None
                ),
            )
            for i, prediction in enumerate(predictions)
        ],
    )
