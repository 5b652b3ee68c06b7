"""Integrated Gradients over a record's note words and structured fields: the one module that imports captum.

What a prediction rests on, for a clinician to check: for one class's logit (or its margin over a
second class), how much each word of the note and each structured field moved it away from a
baseline record that says nothing.

- Method: Integrated Gradients (Sundararajan et al., 2017; captum's `IntegratedGradients`), integrated
  with `n_steps` Gauss-Legendre points, on two kinds of input at once:
  the word embeddings of the tokens (`RecordClassifier.forward_from_inputs_embeds`: position, token-type
  embeddings and the layer norm stay inside the model), and one coefficient per structured field that
  scales the field's own part of the hashed feature vector (`features.encode_fields` of that field alone;
  the parts add up to the record's vector, so bucket collisions between fields cost nothing).
- Baseline: every note token (and field-text token, when fields are written before the note) replaced by
  the [PAD] embedding, with [CLS] and [SEP] kept and the same attention mask; no field features (all
  coefficients 0). [CLS] and [SEP] equal their baseline, so their attribution is exactly 0.
- Words: word pieces merged into the tokenizer's words, with their character span in the note.
  Fields: the tokens of the field's text segment (`modeling.format_fields_with_spans`) plus its
  coefficient; the "; " separators between fields are reported apart, as `other`.
- Completeness: the attributions sum to f(x) - f(baseline), f the explained logit or margin, up to the
  integration rule's error; captum's convergence delta (sum - difference) is returned with both ends.
  `COMPLETENESS_TOLERANCE` states what the tests hold it to.

Gradients are taken with respect to the inputs only, through a forward function of our own: no hook is
placed on the model's modules, so the served model can go on predicting in another thread meanwhile.
The prediction path never imports this module (import-linter).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients

from anamnesis.learner.features import encode_fields
from anamnesis.learner.modeling import ModelBundle, encode_records, format_fields_with_spans, pad_batch

METHOD = "integrated_gradients"
INTEGRATION = "gausslegendre"
BASELINE = (
    "every note and field-text token replaced by the [PAD] embedding ([CLS] and [SEP] kept, same attention mask); "
    "no structured-field features"
)
DEFAULT_STEPS = 32
INTERNAL_BATCH = 32
"""Interpolated rows per forward and backward pass (bounds memory; the result does not depend on it)."""
GROUP = 8
"""(record, target) rows integrated together, padded to the longest of them."""


def completeness_tolerance(difference: float) -> float:
    """The largest |delta| the tests accept for an explained difference f(x) - f(baseline): 0.02 plus 5% of it."""
    return 0.02 + 0.05 * abs(difference)


COMPLETENESS_TOLERANCE = "0.02 + 0.05 * |f(x) - f(baseline)|"


@dataclass(frozen=True)
class AttributionTarget:
    """What to explain of one record: the logit of `label`, or its margin over `compare_to`."""

    note: str
    fields: Mapping[str, Any]
    label: str
    compare_to: str | None = None


@dataclass(frozen=True)
class WordAttribution:
    """One word of the note: note[start:end] is `text`; `pieces` word pieces were merged into it."""

    text: str
    start: int
    end: int
    attribution: float
    pieces: int


@dataclass(frozen=True)
class FieldAttribution:
    """One structured field the model read: the sum of its parts (`from_text`, `from_features`; None for a
    part the model does not have)."""

    name: str
    attribution: float
    from_text: float | None
    from_features: float | None


@dataclass(frozen=True)
class Completeness:
    """f(x) and f(baseline) of the explained logit (or margin), the attributions' sum, and captum's
    convergence delta: sum - (f(x) - f(baseline))."""

    output: float
    baseline_output: float
    attribution_sum: float
    delta: float

    @property
    def difference(self) -> float:
        return self.output - self.baseline_output

    @property
    def within_tolerance(self) -> bool:
        return abs(self.delta) <= completeness_tolerance(self.difference)


@dataclass(frozen=True)
class Attribution:
    """The attributions of one (record, target): every word the model read, every field it read, and the rest."""

    label: str
    compare_to: str | None
    words: tuple[WordAttribution, ...]
    fields: tuple[FieldAttribution, ...]
    other: float
    """Tokens that are neither note words nor a field's text: the separators between fields ([CLS] and [SEP]
    are 0)."""
    completeness: Completeness
    note_chars_read: int
    """The note up to this character was read; the rest was cut at the model's token limit."""
    truncated: bool


@dataclass(frozen=True)
class _Row:
    """One (record, target) prepared for integration."""

    target: AttributionTarget
    token_ids: list[int]
    offsets: list[tuple[int, int]]
    segments: list[int | None]
    words: list[int | None]
    note_segment: int
    field_spans: list[tuple[str, int, int]]
    field_names: list[str]
    field_vectors: np.ndarray  # (fields, dim): each field's part of the feature vector


def _read_fields(bundle: ModelBundle, fields: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if bundle.encoding.reads(name)}


def _prepare(bundle: ModelBundle, target: AttributionTarget, token_ids: list[int], max_length: int) -> _Row:
    read = _read_fields(bundle, target.fields)
    spec = bundle.spec
    spans: list[tuple[str, int, int]] = []
    if spec.fields_in_text:
        field_text, spans = format_fields_with_spans(read)
        encoded = bundle.tokenizer(
            [field_text],
            [target.note],
            truncation="longest_first",
            max_length=max_length,
            return_offsets_mapping=True,
        )
        note_segment = 1
    else:
        encoded = bundle.tokenizer([target.note], truncation=True, max_length=max_length, return_offsets_mapping=True)
        note_segment = 0
    if list(encoded["input_ids"][0]) != token_ids:
        raise RuntimeError("the tokenization with offsets differs from the model's input encoding")
    names: list[str] = []
    vectors: list[np.ndarray] = []
    if spec.uses_features:
        for name, value in read.items():
            vector = encode_fields(bundle.encoding, {name: value})
            if vector.any():
                names.append(name)
                vectors.append(vector)
    dim = bundle.encoding.dim if spec.uses_features else 0
    return _Row(
        target=target,
        token_ids=token_ids,
        offsets=[(int(start), int(end)) for start, end in encoded["offset_mapping"][0]],
        segments=list(encoded.sequence_ids(0)),
        words=list(encoded.word_ids(0)),
        note_segment=note_segment,
        field_spans=spans,
        field_names=names,
        field_vectors=np.stack(vectors) if vectors else np.zeros((0, dim), dtype=np.float32),
    )


def attribute_records(
    bundle: ModelBundle,
    targets: Sequence[AttributionTarget],
    *,
    max_length: int,
    n_steps: int = DEFAULT_STEPS,
    internal_batch_size: int = INTERNAL_BATCH,
) -> list[Attribution]:
    """Integrated Gradients of each target's logit (or margin) over its note words and fields, in order.

    Labels must be the bundle's. Runs on the CPU with the bundle's PyTorch model in eval mode, whatever
    runtime serves its predictions; the model is not changed."""
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2, got {n_steps}")
    if bundle.model.training:
        raise ValueError("the model must be in eval mode (no dropout) to be explained")
    index = bundle.label_index
    for target in targets:
        for label in (target.label, target.compare_to):
            if label is not None and label not in index:
                raise ValueError("a target names a class the model does not have")
    if not targets:
        return []
    inputs = encode_records(bundle, [t.note for t in targets], [dict(t.fields) for t in targets], max_length=max_length)
    rows = [_prepare(bundle, t, ids, max_length) for t, ids in zip(targets, inputs.token_ids, strict=True)]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].token_ids))
    results: dict[int, Attribution] = {}
    for start in range(0, len(order), GROUP):
        chunk = order[start : start + GROUP]
        for position, result in zip(
            chunk, _integrate(bundle, [rows[i] for i in chunk], n_steps, internal_batch_size), strict=True
        ):
            results[position] = result
    return [results[i] for i in range(len(rows))]


def _integrate(bundle: ModelBundle, rows: Sequence[_Row], n_steps: int, internal_batch_size: int) -> list[Attribution]:
    model = bundle.model
    device = next(model.parameters()).device
    pad_id = bundle.tokenizer.pad_token_id or 0
    ids, mask = pad_batch([row.token_ids for row in rows], pad_id)
    content = torch.zeros_like(ids, dtype=torch.bool)  # note and field-text tokens: replaced in the baseline
    for r, row in enumerate(rows):
        for t, segment in enumerate(row.segments):
            content[r, t] = segment is not None
    baseline_ids = torch.where(content, torch.full_like(ids, pad_id), ids)
    uses_features = bundle.spec.uses_features
    width = max(1, max(len(row.field_names) for row in rows))
    dim = bundle.encoding.dim if uses_features else 0
    vectors = torch.zeros((len(rows), width, dim), dtype=torch.float32)
    coefficients = torch.zeros((len(rows), width), dtype=torch.float32)
    for r, row in enumerate(rows):
        count = len(row.field_names)
        if count:
            vectors[r, :count] = torch.from_numpy(row.field_vectors)
            coefficients[r, :count] = 1.0
    index = bundle.label_index
    target_index = torch.tensor([index[row.target.label] for row in rows], dtype=torch.long)
    compare_index = torch.tensor(
        [index[row.target.compare_to] if row.target.compare_to is not None else -1 for row in rows], dtype=torch.long
    )
    embedding = model.bert.embeddings.word_embeddings
    with torch.inference_mode(False), torch.enable_grad():
        embeds = embedding(ids.to(device)).detach()
        baseline_embeds = embedding(baseline_ids.to(device)).detach()

        def forward(
            token_embeds: torch.Tensor,
            *rest: torch.Tensor,
        ) -> torch.Tensor:
            if uses_features:
                field_coefficients, attention, field_vectors, targets, compares = rest
                features = torch.einsum("bf,bfd->bd", field_coefficients, field_vectors)
            else:
                attention, field_vectors, targets, compares = rest
                features = torch.zeros((token_embeds.shape[0], 0), dtype=token_embeds.dtype, device=device)
            logits = model.forward_from_inputs_embeds(token_embeds, attention, features)[0].float()
            chosen = logits.gather(1, targets[:, None]).squeeze(1)
            other = logits.gather(1, compares.clamp(min=0)[:, None]).squeeze(1)
            return chosen - torch.where(compares >= 0, other, torch.zeros_like(other))

        extra = (mask.to(device), vectors.to(device), target_index.to(device), compare_index.to(device))
        if uses_features:
            coefficient_input = coefficients.to(device)
            inputs: tuple[torch.Tensor, ...] = (embeds, coefficient_input)
            baselines: tuple[torch.Tensor, ...] = (baseline_embeds, torch.zeros_like(coefficient_input))
        else:
            inputs, baselines = (embeds,), (baseline_embeds,)
        attributions, delta = IntegratedGradients(forward).attribute(
            inputs,
            baselines=baselines,
            additional_forward_args=extra,
            n_steps=n_steps,
            method=INTEGRATION,
            internal_batch_size=max(internal_batch_size, len(rows)),
            return_convergence_delta=True,
        )
        with torch.no_grad():
            outputs = forward(*inputs, *extra).double().cpu()
            baseline_outputs = forward(*baselines, *extra).double().cpu()
    tokens = attributions[0].double().sum(dim=-1).cpu()
    fields = attributions[1].double().cpu() if uses_features else torch.zeros((len(rows), width), dtype=torch.float64)
    deltas = delta.double().cpu()
    return [
        _collect(
            row,
            tokens[r, : len(row.token_ids)].tolist(),
            fields[r, : len(row.field_names)].tolist(),
            Completeness(
                output=float(outputs[r]),
                baseline_output=float(baseline_outputs[r]),
                attribution_sum=float(tokens[r].sum() + fields[r].sum()),
                delta=float(deltas[r]),
            ),
            fields_in_text=bundle.spec.fields_in_text,
            uses_features=uses_features,
        )
        for r, row in enumerate(rows)
    ]


def _collect(
    row: _Row,
    token_scores: list[float],
    field_scores: list[float],
    completeness: Completeness,
    *,
    fields_in_text: bool,
    uses_features: bool,
) -> Attribution:
    """Merges token scores into note words and fields (see the module docstring)."""
    note = row.target.note
    words: dict[int, list[int]] = {}
    text_part: dict[str, float] = {}
    other = 0.0
    read = 0
    for t, segment in enumerate(row.segments):
        word = row.words[t]
        if segment == row.note_segment and word is not None:
            words.setdefault(word, []).append(t)
            read = max(read, row.offsets[t][1])
            continue
        if segment is not None and segment != row.note_segment:
            start = row.offsets[t][0]
            name = next((n for n, begin, end in row.field_spans if begin <= start < end), None)
            if name is not None:
                text_part[name] = text_part.get(name, 0.0) + token_scores[t]
                continue
        other += token_scores[t]
    merged = []
    for pieces in words.values():
        start, end = row.offsets[pieces[0]][0], row.offsets[pieces[-1]][1]
        merged.append(
            WordAttribution(
                text=note[start:end],
                start=start,
                end=end,
                attribution=math.fsum(token_scores[t] for t in pieces),
                pieces=len(pieces),
            )
        )
    merged.sort(key=lambda word: word.start)
    feature_part = dict(zip(row.field_names, field_scores, strict=True))
    names = [name for name, _, _ in row.field_spans]
    names += [name for name in row.field_names if name not in names]
    fields = tuple(
        FieldAttribution(
            name=name,
            attribution=text_part.get(name, 0.0) + feature_part.get(name, 0.0),
            from_text=text_part.get(name, 0.0) if fields_in_text else None,
            from_features=feature_part.get(name, 0.0) if uses_features else None,
        )
        for name in names
    )
    return Attribution(
        label=row.target.label,
        compare_to=row.target.compare_to,
        words=tuple(merged),
        fields=fields,
        other=other,
        completeness=completeness,
        note_chars_read=read,
        truncated=bool(note[read:].strip()),
    )
