"""Everything the monitor asks of Evidently, and the only module that imports it.

Importing evidently takes 3-4 s, so the rest of the monitor imports this module lazily, inside the
functions that compute. Evidently's conventions are kept in here: `Report.run(current, reference)`
takes the current window first, drift flags come from the tests (`include_tests=True`), the
embedding methods are called directly (the `EmbeddingsDrift` metric always runs t-SNE for its plot)
and NLTK's `download()` is disabled while descriptors compute (Evidently calls it on every use; the
data comes from the local NLTK_DATA or the descriptor is not used). The data drift report is one
snapshot (`drift_snapshot`) that both draws the HTML page and is added to a local Evidently
workspace (`add_to_workspace`, the folder `evidently ui --workspace` serves).
"""

from __future__ import annotations

import contextlib
import functools
import re
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import nltk
import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.descriptors import (
    NonLetterCharacterPercentage,
    OOVWordsPercentage,
    SentenceCount,
    Sentiment,
    TextLength,
    WordCount,
)
from evidently.legacy.metrics.data_drift import embedding_drift_methods
from evidently.legacy.utils.data_drift_utils import get_typical_words, roc_auc_domain_classifier
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset
from nltk.stem.wordnet import WordNetLemmatizer
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split

from anamnesis.monitor.config import (
    CategoricalMethod,
    DistanceMetric,
    EmbeddingMethod,
    NumericalMethod,
    TextDescriptor,
)
from anamnesis.monitor.errors import NotComputableError
from anamnesis.storage.private import PRIVATE_FILE, private_dir

NOTE = "note"
# Namespace of the ids of workspace projects named by the service (uuid5 of the project name).
_PROJECT_NAMESPACE = uuid.UUID("5f0c4a52-8d1e-4a47-9b8e-3f1d2c7a6e10")
# The data each NLTK-based descriptor loads (nltk.data.find paths).
NLTK_RESOURCES: dict[TextDescriptor, tuple[str, ...]] = {
    TextDescriptor.oov_share: ("corpora/wordnet", "corpora/words"),
    TextDescriptor.sentiment: ("sentiment/vader_lexicon.zip/vader_lexicon/vader_lexicon.txt",),
}


class ColumnKind(StrEnum):
    numerical = "numerical"
    categorical = "categorical"


@dataclass(frozen=True)
class ColumnSpec:
    """One column to compare, with its fixed method and threshold."""

    name: str
    kind: ColumnKind
    method: NumericalMethod | CategoricalMethod
    threshold: float


@dataclass(frozen=True)
class ColumnDrift:
    score: float
    drifted: bool
    method: str
    """Evidently's display name of the method, e.g. "Wasserstein distance (normed)"."""
    threshold: float


@dataclass(frozen=True)
class TextContentDrift:
    auc: float
    words_current: tuple[str, ...]
    """Words that most mark a note as current, unfiltered: `monitor.checks.reportable_words` decides
    which a page may show."""
    words_reference: tuple[str, ...]


@contextlib.contextmanager
def _no_nltk_downloads() -> Iterator[None]:
    """Evidently's NLTK descriptors as they are, without downloads, and with the WordNet lemmatizer
    memoized: the out-of-vocabulary share lemmatizes every word of every note, and clinical notes
    repeat a small vocabulary (the same words, the same lemmas, a fraction of the time)."""
    original_download, original_lemmatize = nltk.download, WordNetLemmatizer.lemmatize
    lemmatizer = WordNetLemmatizer()

    @functools.lru_cache(maxsize=100_000)
    def lemma(word: str, pos: str) -> str:
        return str(original_lemmatize(lemmatizer, word, pos))

    nltk.download = lambda *args, **kwargs: True  # the data is local or the descriptor is not used
    WordNetLemmatizer.lemmatize = lambda self, word, pos="n": lemma(word, pos)
    try:
        yield
    finally:
        nltk.download = original_download
        WordNetLemmatizer.lemmatize = original_lemmatize


def descriptor_available(descriptor: TextDescriptor) -> bool:
    """Whether the descriptor can compute here (NLTK-based ones need their data locally)."""
    for resource in NLTK_RESOURCES.get(descriptor, ()):
        try:
            nltk.data.find(resource)
        except LookupError:
            return False
    return True


def _descriptor(descriptor: TextDescriptor) -> Any:
    factories = {
        TextDescriptor.text_length: TextLength,
        TextDescriptor.word_count: WordCount,
        TextDescriptor.sentence_count: SentenceCount,
        TextDescriptor.non_letter_share: NonLetterCharacterPercentage,
        TextDescriptor.oov_share: OOVWordsPercentage,
        TextDescriptor.sentiment: Sentiment,
    }
    return factories[descriptor](NOTE, alias=descriptor.value)


def text_descriptors(notes: Sequence[str], descriptors: Sequence[TextDescriptor]) -> pd.DataFrame:
    """One float column per descriptor (named by its value), one row per note."""
    if not descriptors:
        return pd.DataFrame(index=pd.RangeIndex(len(notes)))
    frame = pd.DataFrame({NOTE: list(notes)})
    with _no_nltk_downloads():
        dataset = Dataset.from_pandas(
            frame,
            data_definition=DataDefinition(text_columns=[NOTE]),
            descriptors=[_descriptor(descriptor) for descriptor in descriptors],
        )
        values = dataset.as_dataframe()
    names = [descriptor.value for descriptor in descriptors]
    return values[names].astype("float64").reset_index(drop=True)


_ANGLE_BRACKETS = str.maketrans({"<": "\u2039", ">": "\u203a"})


def _inert(text: str) -> str:
    """`text` with `<` and `>` as the look-alikes `‹` and `›`: nothing in it can open or close a tag."""
    return text.translate(_ANGLE_BRACKETS)


def _inert_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy with inert column names and inert text values (numbers untouched)."""
    inert = frame.rename(columns=lambda name: _inert(str(name)))
    for column in inert.columns:
        if inert[column].dtype == object:
            inert[column] = inert[column].map(lambda value: _inert(value) if isinstance(value, str) else value)
    return inert


def _status_by_metric(snapshot_dict: dict[str, Any]) -> dict[str, bool]:
    return {
        test["metric_config"]["metric_id"]: str(getattr(test["status"], "value", test["status"])) == "FAIL"
        for test in snapshot_dict["tests"]
    }


def column_drift(reference: pd.DataFrame, current: pd.DataFrame, specs: Sequence[ColumnSpec]) -> dict[str, ColumnDrift]:
    """Per-column drift with Evidently's ValueDrift, each column with its own fixed method.

    Every column must have at least one non-missing value on each side (the caller reports the
    others as schema drift).
    """
    if not specs:
        return {}
    names = [spec.name for spec in specs]
    definition = DataDefinition(
        numerical_columns=[spec.name for spec in specs if spec.kind == ColumnKind.numerical],
        categorical_columns=[spec.name for spec in specs if spec.kind == ColumnKind.categorical],
    )
    snapshot = Report(
        [ValueDrift(column=spec.name, method=spec.method, threshold=spec.threshold) for spec in specs],
        include_tests=True,
    ).run(
        Dataset.from_pandas(current[names].copy(), data_definition=definition),
        Dataset.from_pandas(reference[names].copy(), data_definition=definition),
    )
    result = snapshot.dict()
    drifted = _status_by_metric(result)
    out: dict[str, ColumnDrift] = {}
    for metric in result["metrics"]:
        config = metric["config"]
        out[config["column"]] = ColumnDrift(
            score=float(metric["value"]),
            drifted=drifted[metric["id"]],
            method=str(config["method"]),
            threshold=float(config["threshold"]),
        )
    return out


def text_content_drift(
    reference: Sequence[str], current: Sequence[str], *, candidate_words: int = 0
) -> TextContentDrift:
    """Evidently's text-content drift: a TF-IDF + linear domain classifier trained on half of the
    pooled notes to tell current from reference; its ROC AUC on the other half is the score.

    Raises NotComputableError when the notes leave no usable vocabulary (templated or tiny windows).
    """
    texts = pd.Series([*reference, *current])
    target = pd.Series([0] * len(reference) + [1] * len(current))
    x_train, x_test, y_train, y_test = train_test_split(texts, target, test_size=0.5, random_state=42, shuffle=True)
    if y_train.nunique() < 2 or y_test.nunique() < 2:
        raise NotComputableError("too few notes to train and test the domain classifier")
    try:
        with warnings.catch_warnings():
            # Evidently fixes the classifier at 50 SGD iterations; on large windows it stops before converging.
            warnings.simplefilter("ignore", ConvergenceWarning)
            auc, _, pipeline = roc_auc_domain_classifier(x_train, x_test, y_train, y_test)
    except ValueError as error:
        if re.search(r"no terms remain|empty vocabulary", str(error)):
            raise NotComputableError(f"the notes leave no vocabulary for the domain classifier ({error})") from None
        raise
    words_current, words_reference = get_typical_words(pipeline, words_num=candidate_words)
    return TextContentDrift(auc=float(auc), words_current=tuple(words_current), words_reference=tuple(words_reference))


def embedding_drift(
    reference: np.ndarray,
    current: np.ndarray,
    *,
    method: EmbeddingMethod,
    threshold: float,
    metric: DistanceMetric,
) -> tuple[float, bool]:
    """(score, drifted) of one of Evidently's embedding drift methods, called without the Report
    (whose metric always runs t-SNE). The method mutates its frames, so it gets fresh ones."""
    columns = [f"e{index}" for index in range(reference.shape[1])]
    if method == EmbeddingMethod.model:
        drift_method = embedding_drift_methods.model(threshold=threshold, bootstrap=False)
    elif method == EmbeddingMethod.ratio:
        drift_method = embedding_drift_methods.ratio(threshold=threshold)
    else:
        drift_method = embedding_drift_methods.distance(dist=metric.value, threshold=threshold, bootstrap=False)
    score, drifted, _ = drift_method(
        pd.DataFrame(np.asarray(current, dtype=np.float64), columns=columns),
        pd.DataFrame(np.asarray(reference, dtype=np.float64), columns=columns),
    )
    return float(score), bool(drifted)


@dataclass(frozen=True)
class DriftSnapshot:
    """Evidently's data drift report of one check, computed once: the page (`snapshot_html`) and the
    workspace copy (`add_to_workspace`) are both made from it. Built from inert frames only
    (`drift_snapshot`), so it holds what the page shows and nothing more."""

    run: Any = field(repr=False)
    """The `evidently.Snapshot` (kept untyped: Evidently's types stay inside this module)."""


def drift_snapshot(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    specs: Sequence[ColumnSpec],
    *,
    tags: Sequence[str] = (),
    metadata: Mapping[str, str] | None = None,
) -> DriftSnapshot:
    """Evidently's data drift report (DataDriftPreset with tests) of the given columns, each with its
    own method and threshold, labelled with `tags` and `metadata` (shown in Evidently's UI). Notes
    themselves are never passed in.

    Evidently writes its data into a `<script>` block of the page without escaping `</`, so a category
    value or a column name sent to the API could close the block and run as script: every name and
    text value reaches it with its angle brackets replaced by look-alikes (shown, never parsed). The
    workspace copy is made of the same values."""
    specs = [replace(spec, name=_inert(spec.name)) for spec in specs]
    reference, current = _inert_frame(reference), _inert_frame(current)
    names = [spec.name for spec in specs]
    definition = DataDefinition(
        numerical_columns=[spec.name for spec in specs if spec.kind == ColumnKind.numerical],
        categorical_columns=[spec.name for spec in specs if spec.kind == ColumnKind.categorical],
    )
    preset = DataDriftPreset(
        columns=names,
        per_column_method={spec.name: spec.method for spec in specs},
        per_column_threshold={spec.name: spec.threshold for spec in specs},
    )
    run = Report([preset], include_tests=True).run(
        Dataset.from_pandas(current[names].copy(), data_definition=definition),
        Dataset.from_pandas(reference[names].copy(), data_definition=definition),
        tags=[_inert(tag) for tag in tags],
        metadata={_inert(key): _inert(value) for key, value in (metadata or {}).items()},
    )
    return DriftSnapshot(run)


def snapshot_html(snapshot: DriftSnapshot, *, summary_html: str) -> str:
    """A self-contained HTML page: `summary_html` at the top of the body, then the snapshot's data
    drift report (distributions per column)."""
    page: str = snapshot.run.get_html_str(as_iframe=False)
    body = re.search(r"<body[^>]*>", page)
    if body is None:  # pragma: no cover - evidently's template always has a body
        return f"<!DOCTYPE html><html><body>{summary_html}{page}</body></html>"
    return page[: body.end()] + summary_html + page[body.end() :]


def drift_report_html(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    specs: Sequence[ColumnSpec],
    *,
    summary_html: str,
) -> str:
    """`snapshot_html` of a fresh `drift_snapshot` (for callers that want the page only)."""
    return snapshot_html(drift_snapshot(reference, current, specs), summary_html=summary_html)


def workspace_project_id(project_name: str) -> str:
    """The id a project created by `add_to_workspace` gets: derived from its name, so that processes
    creating it at the same time create the same project (one folder) instead of two."""
    return str(uuid.uuid5(_PROJECT_NAMESPACE, project_name))


def add_to_workspace(
    workspace_dir: Path,
    project_name: str,
    snapshot: DriftSnapshot,
    *,
    name: str,
    description: str | None = None,
    keep_runs: int | None = None,
) -> str:
    """Adds `snapshot` as a run named `name` to the project `project_name` of the local Evidently
    workspace at `workspace_dir` (the folder `evidently ui --workspace` serves); returns the run's id.

    The folder is created if missing, private to the service's user (0700) like the other files that
    come from patient data; the run file is made 0600. The project is the one this function creates
    (its id derived from the name, with `description` and a dashboard panel plotting the share of
    drifted columns run by run), or else one of that name made by hand. Only the report's results and
    widgets are written, never its input rows (`include_data=False`). With `keep_runs`, the project's
    oldest runs beyond that many are then deleted (run ids are UUIDv7: their order is their age).
    Raises whatever Evidently or the file system raise."""
    from evidently.sdk.models import PanelMetric, ProjectModel
    from evidently.sdk.panels import line_plot_panel
    from evidently.ui.workspace import Workspace

    private_dir(workspace_dir)
    workspace = Workspace(str(workspace_dir))
    projects = sorted(workspace.search_project(project_name), key=lambda project: str(project.id))
    fixed_id = uuid.UUID(workspace_project_id(project_name))
    project = next((p for p in projects if p.id == fixed_id), projects[0] if projects else None)
    if project is None:
        project = workspace.add_project(ProjectModel(id=fixed_id, name=project_name, description=description))
        project.dashboard.add_panel(
            line_plot_panel(
                title="Share of drifted columns",
                description="Evidently's count over the compared columns; the monitor's own verdict is in each "
                "run's tags and metadata.",
                values=[
                    PanelMetric(
                        legend="share",
                        metric="evidently:metric_v2:DriftedColumnsCount",
                        metric_labels={"value_type": "share"},
                    )
                ],
            )
        )
    ref = workspace.add_run(project.id, snapshot.run, include_data=False, name=_inert(name))
    written = Path(ref.url)
    if written.is_file() and written.resolve().is_relative_to(workspace_dir.resolve()):
        written.chmod(PRIVATE_FILE)
    if keep_runs is not None:
        runs = sorted(workspace.list_runs(project.id), key=str)
        for old in runs[: max(len(runs) - keep_runs, 0)]:
            if old != ref.id:
                workspace.delete_run(project.id, old)
    return str(ref.id)
