"""Serving runtimes for a model version: PyTorch, or ONNX with int8 dynamic quantization.

At promotion the model is exported to ONNX and quantized; the quantized model serves only when
its accuracy on the held-out slice is within `ONNX_TOLERANCE` of PyTorch's. The choice and its
reason are recorded on the model version. Weights are stored as safetensors; the ONNX file is a
derived, sha256-checked serving artifact (protobuf, never pickle).

Whichever runtime serves, its probabilities are softmax(logits / T) with the version's temperature T
(fitted on its held-out records at the update, `learner.calibration`; 1 for versions stored before).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from sqlmodel import Session

from anamnesis.learner.calibration import calibrated_probabilities
from anamnesis.learner.data import encode_labeled
from anamnesis.learner.modeling import (
    ModelBundle,
    ModelInputs,
    RecordClassifier,
    encode_records,
    length_sorted_batches,
    load_bundle,
    pad_batch,
)
from anamnesis.learner.results import UpdateMetrics
from anamnesis.learner.updater import RuntimePreparer, holdout_of
from anamnesis.service.predicting.choice import RuntimeChoice, RuntimeKind
from anamnesis.service.settings import RuntimeMode
from anamnesis.storage.artifacts import verify_artifact, write_artifact
from anamnesis.storage.models import ModelVersion, row_id
from anamnesis.storage.queries import LabeledRecord, get_model_version
from anamnesis.storage.repository import promote_model_version

ONNX_TOLERANCE = 0.005
ONNX_FILE = "model.int8.onnx"
logger = logging.getLogger("anamnesis.runtime")


class Runtime(Protocol):
    kind: RuntimeKind
    temperature: float
    """The probabilities are softmax(logits / temperature)."""

    def infer(self, ids: np.ndarray, mask: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated class probabilities and mean-pooled note embeddings for a padded batch and its field
        features."""
        ...


class _LogitsAndEmbeddings(torch.nn.Module):
    def __init__(self, model: RecordClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, field_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.forward_with_embeddings(input_ids, attention_mask, field_features)


class PyTorchRuntime:
    kind = RuntimeKind.pytorch

    def __init__(self, bundle: ModelBundle, *, temperature: float = 1.0) -> None:
        self.temperature = temperature
        self._module = _LogitsAndEmbeddings(bundle.model).eval()
        self._lock = threading.Lock()  # one forward at a time: torch already uses every core

    @torch.inference_mode()
    def infer(self, ids: np.ndarray, mask: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            logits, embeddings = self._module(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(features))
        return calibrated_probabilities(logits.float().numpy(), self.temperature), embeddings.float().numpy()


class OnnxRuntime:
    kind = RuntimeKind.onnx_int8

    def __init__(self, path: Path, *, threads: int | None = None, temperature: float = 1.0) -> None:
        import onnxruntime

        self.temperature = temperature
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def infer(self, ids: np.ndarray, mask: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, embeddings = self._session.run(
            None, {"input_ids": ids, "attention_mask": mask, "field_features": features}
        )
        return calibrated_probabilities(logits, self.temperature), embeddings


def export_onnx_int8(bundle: ModelBundle, folder: Path) -> None:
    """Exports logits and embeddings with dynamic batch and length, then quantizes weights to int8."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    module = _LogitsAndEmbeddings(bundle.model).eval()
    example = encode_records(bundle, ["example note"] * 2, [{}, {}], max_length=16)
    ids, mask = pad_batch(example.token_ids, 0)
    full = folder / "model.fp32.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (ids, mask, torch.from_numpy(example.features)),
            str(full),
            dynamo=False,
            input_names=["input_ids", "attention_mask", "field_features"],
            output_names=["logits", "embeddings"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "length"},
                "attention_mask": {0: "batch", 1: "length"},
                "field_features": {0: "batch"},
                "logits": {0: "batch"},
                "embeddings": {0: "batch"},
            },
            opset_version=17,
        )
    logging.getLogger().disabled, was = True, logging.getLogger().disabled  # quantize_dynamic logs a tip
    try:
        quantize_dynamic(str(full), str(folder / ONNX_FILE), weight_type=QuantType.QInt8)
    finally:
        logging.getLogger().disabled = was
    full.unlink()


INFERENCE_BATCH = 64


@dataclass(frozen=True)
class Outputs:
    """What the model says about records, row for row in input order."""

    probabilities: np.ndarray  # (rows, classes), columns in the model's label order
    embeddings: np.ndarray  # (rows, hidden): the mean-pooled note embedding the monitor compares


def infer_batched(
    runtime: Runtime, bundle: ModelBundle, inputs: ModelInputs, *, batch_size: int = INFERENCE_BATCH
) -> Outputs:
    """The service's one batched inference: length-sorted batches through `runtime`, rows in input order.

    Needs at least one record."""
    pad_id = bundle.tokenizer.pad_token_id or 0
    order: list[int] = []
    probability_parts: list[np.ndarray] = []
    embedding_parts: list[np.ndarray] = []
    for chunk in length_sorted_batches(inputs, batch_size):
        ids, mask = pad_batch([inputs.token_ids[index] for index in chunk], pad_id)
        probabilities, embeddings = runtime.infer(ids.numpy(), mask.numpy(), inputs.features[chunk])
        order.extend(chunk)
        probability_parts.append(probabilities)
        embedding_parts.append(embeddings)
    if not order:
        raise ValueError("no records to infer")
    restore = np.argsort(order)
    return Outputs(np.concatenate(probability_parts)[restore], np.concatenate(embedding_parts)[restore])


@dataclass(frozen=True)
class LoadedModel:
    """A model version ready to serve: its runtime and the bundle that encodes records for it."""

    version_id: int
    bundle: ModelBundle
    runtime: Runtime
    max_length: int

    @property
    def kind(self) -> RuntimeKind:
        return self.runtime.kind

    @property
    def labels(self) -> tuple[str, ...]:
        return self.bundle.labels

    @property
    def temperature(self) -> float:
        return self.runtime.temperature

    def predict(self, notes: Sequence[str], fields: Sequence[Mapping[str, Any]]) -> Outputs:
        """Class probabilities and note embeddings of records, by the batched inference."""
        inputs = encode_records(self.bundle, notes, fields, max_length=self.max_length)
        return infer_batched(self.runtime, self.bundle, inputs)


def _accuracy(runtime: Runtime, bundle: ModelBundle, records: Sequence[LabeledRecord], max_length: int) -> float:
    """Accuracy of `runtime` on labeled records (at least one)."""
    outputs = infer_batched(runtime, bundle, encode_labeled(bundle, records, max_length=max_length))
    predicted = outputs.probabilities.argmax(axis=1)
    return sum(bundle.labels[int(p)] == r.label for p, r in zip(predicted, records, strict=True)) / len(records)


def choose_runtime(
    version: ModelVersion,
    bundle: ModelBundle,
    holdout: Sequence[LabeledRecord],
    *,
    artifacts_dir: Path,
    max_length: int,
    mode: RuntimeMode = "auto",
    tolerance: float = ONNX_TOLERANCE,
) -> RuntimeChoice:
    """Exports and validates the ONNX int8 model; returns what to record as the version's runtime: ONNX
    int8 when its held-out accuracy is within `tolerance` of PyTorch's (or forced), PyTorch otherwise."""
    if mode == "pytorch":
        return RuntimeChoice(kind=RuntimeKind.pytorch, reason="PyTorch forced by configuration")
    try:
        folder, digest = write_artifact(
            artifacts_dir, f"onnx-{version.id}-{version.artifact_sha256[:8]}", lambda f: export_onnx_int8(bundle, f)
        )
    except Exception as error:
        logger.warning("ONNX export of model version %s failed: %s", version.id, type(error).__name__)
        return RuntimeChoice(kind=RuntimeKind.pytorch, reason=f"ONNX export failed ({type(error).__name__})")
    if not holdout:
        return RuntimeChoice(
            kind=RuntimeKind.onnx_int8,
            onnx_path=str(folder),
            onnx_sha256=digest,
            reason="no held-out records to compare the runtimes on: ONNX int8 served unvalidated",
        )
    onnx = OnnxRuntime(folder / ONNX_FILE)
    accuracy_onnx = _accuracy(onnx, bundle, holdout, max_length)
    accuracy_torch = _accuracy(PyTorchRuntime(bundle), bundle, holdout, max_length)
    close = abs(accuracy_torch - accuracy_onnx) <= tolerance
    return RuntimeChoice(
        kind=RuntimeKind.onnx_int8 if close or mode == "onnx" else RuntimeKind.pytorch,
        onnx_path=str(folder),
        onnx_sha256=digest,
        accuracy_pytorch=accuracy_torch,
        accuracy_onnx_int8=accuracy_onnx,
        validation_records=len(holdout),
        reason=(
            f"ONNX int8 accuracy {accuracy_onnx:.4f} vs PyTorch {accuracy_torch:.4f} on {len(holdout)} held-out records"
            + (" (within tolerance)" if close else f" (differs by more than {tolerance})")
        ),
    )


def load_model(version: ModelVersion, *, max_length: int, mode: RuntimeMode = "auto") -> LoadedModel:
    """Loads the runtime recorded at promotion (checking every artifact's sha256), serving probabilities at the
    version's temperature."""
    bundle = load_bundle(Path(version.artifact_path), expected_sha256=version.artifact_sha256)
    metrics = UpdateMetrics.from_stored(version)
    temperature = metrics.temperature if metrics is not None else 1.0
    runtime: Runtime
    choice = RuntimeChoice.from_stored(version)
    onnx_path, onnx_sha256 = (choice.onnx_path, choice.onnx_sha256) if choice else (None, None)
    use_onnx = choice is not None and choice.kind == RuntimeKind.onnx_int8 and mode != "pytorch"
    if onnx_path and onnx_sha256 and (use_onnx or mode == "onnx"):
        folder = Path(onnx_path)
        verify_artifact(folder, onnx_sha256)
        runtime = OnnxRuntime(folder / ONNX_FILE, temperature=temperature)
    else:
        runtime = PyTorchRuntime(bundle, temperature=temperature)
    return LoadedModel(version_id=row_id(version), bundle=bundle, runtime=runtime, max_length=max_length)


def runtime_preparer(*, artifacts_dir: Path, max_length: int, mode: RuntimeMode) -> RuntimePreparer:
    """The promotion hook of `learner.updater.run_update`: export, validate and choose the runtime."""

    def prepare(version: ModelVersion, bundle: ModelBundle, holdout: Sequence[LabeledRecord]) -> dict[str, Any]:
        choice = choose_runtime(version, bundle, holdout, artifacts_dir=artifacts_dir, max_length=max_length, mode=mode)
        return choice.model_dump(mode="json")

    return prepare


def promote_with_runtime(
    session: Session,
    *,
    version_id: int,
    actor: str,
    reason: str,
    allow_rejected: bool,
    artifacts_dir: Path,
    max_length: int,
    mode: RuntimeMode,
) -> ModelVersion:
    """A manual promotion: chooses the serving runtime first when the version never had one."""

    version = get_model_version(session, version_id)
    runtime = None
    if not version.runtime:
        bundle = load_bundle(Path(version.artifact_path), expected_sha256=version.artifact_sha256)
        runtime = choose_runtime(
            version, bundle, holdout_of(session, version), artifacts_dir=artifacts_dir, max_length=max_length, mode=mode
        ).model_dump(mode="json")
    return promote_model_version(
        session, version_id=version_id, actor=actor, reason=reason, runtime=runtime, allow_rejected=allow_rejected
    )
