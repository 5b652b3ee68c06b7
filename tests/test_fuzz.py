"""The OpenAPI document is the service's contract, and schemathesis holds the service to it:
`schemathesis run --checks all` (every check: no 5xx, every status, body, header and content type as
documented, schema-valid requests accepted and schema-invalid ones refused, 405 and its Allow header
for undocumented methods, authentication not ignored...) in every phase (coverage, fuzzing, stateful)
and both generation modes, against the app served on a free port. The patterns that state the
validators' rules in the document are checked against the validators themselves, and inputs that once
answered 5xx are replayed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema_rs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from anamnesis.service.app import create_app
from anamnesis.storage import patterns
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.fields import ClinicalFields, identifier_name, identifier_name_pattern
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.schemas import NOTE_SCHEMA, LabelName, PatientReference, RecordCreate, check_note, timestamp_text
from tests.processes import serving_in_thread
from tests.service_fixtures import installation, settings_for

SEED = int(os.environ.get("ANAMNESIS_FUZZ_SEED", "20261130"))  # another seed explores other inputs
EXAMPLES = int(os.environ.get("ANAMNESIS_FUZZ_EXAMPLES", "8"))  # per operation and mode, in the full run

# Where a check cannot hold, and why; only that check, only for that operation, only for those statuses.
# positive_data_acceptance expects a schema-valid request to be accepted. No JSON schema can say what
# makes these two inputs valid, so a schema-valid one may still be refused as the status says:
# - an upload's file: CSV, JSONL or Parquet holding the named columns (422: the file as a whole);
# - an Open Inference Protocol infer body: tensors whose shape matches their element count, the same
#   number of records in each, `fields` elements holding JSON objects of clinical fields (400, as the
#   protocol answers bad input);
# - an explain body: at most the service's `explain_max_records` records (the schema states the largest
#   limit it may be set to), a `compare_to` among the served model's classes (422), and within the key's
#   explained records per minute (429).
CONFIG = """
[[operations]]
include-name = "POST /v1/records/upload"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]

[[operations]]
include-name = ["POST /v2/models/{name}/infer", "POST /v2/models/{name}/versions/{version}/infer"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]

[[operations]]
include-name = "POST /v1/explain"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429"]
"""


def schemathesis_run(url: str, folder: Path, *options: str) -> tuple[int, str]:
    """`schemathesis run --checks all` against the document at `url`; its exit status and output."""
    (folder / "schemathesis.toml").write_text(CONFIG)
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(folder / "schemathesis.toml"), "run"]
    command += [f"{url}/openapi.json", "--checks", "all", "--seed", str(SEED), "--workers", "1"]
    command += ["--generation-database", "none", "--no-color", *options]
    # Its own folder: schemathesis keeps a cache of failures in its working directory.
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=600, check=False)
    return done.returncode, done.stdout + done.stderr


def failures(output: str) -> str:
    """The failures a run reports (its summary when it reports none)."""
    found = re.search(r"=+ FAILURES =+\n(.*?)\n=+ (?:WARNINGS|SUMMARY)", output, re.S)
    return (found.group(1) if found else output)[-20_000:]


V2 = "/v2/models/anamnesis/infer"
JSON = {"content-type": "application/json"}
# Inputs that once answered 5xx (found by hand, not by the strategies): every run replays them.
CORPUS: list[tuple[str, bytes, dict[str, str]]] = [
    ("/v1/predict", b'{"note": "lone \\ud800 surrogate", "fields": {}}', JSON),
    ("/v1/predict", b'{"note": "x", "fields": {"age": Infinity}}', JSON),
    ("/v1/predict", b'{"note": "x", "fields": {"age": 1e400}}', JSON),
    ("/v1/predict", b'{"note": "not utf-8 \xff\xfe"}', {}),
    (V2, b'{"inputs": [{"name": "note", "shape": [0], "datatype": "BYTES", "data": []}]}', JSON),
    (
        V2,
        b'{"inputs": [{"name": "note", "shape": [1], "datatype": "BYTES", "data": ["x"]},'
        b' {"name": "fields", "shape": [1], "datatype": "BYTES", "data": ["{\\"age\\": {\\"n\\": 1}}"]}]}',
        JSON,
    ),
]


@pytest.mark.slow
def test_the_service_keeps_its_openapi_contract(tmp_path) -> None:
    config = StorageConfig.embedded(tmp_path / "home")
    upgrade(create_db_engine(config))
    engine, keys = installation(config)
    with serving_in_thread(create_app(settings_for(config))) as port:
        url = f"http://127.0.0.1:{port}"
        runs = {
            # Every phase and check with an admin key, which may call every operation.
            "admin key": schemathesis_run(url, tmp_path, "--header", f"X-API-Key: {keys.admin}", "-n", str(EXAMPLES)),
            # Every operation's refusals are documented too: without a key (401), with a predict key (403).
            "no key": schemathesis_run(url, tmp_path, "--phases", "fuzzing", "-n", "2"),
            "predict key": schemathesis_run(
                url, tmp_path, "--header", f"X-API-Key: {keys.predict}", "--phases", "fuzzing", "-n", "2"
            ),
        }
        replayed = []
        for path, body, headers in CORPUS:
            response = httpx.post(url + path, content=body, headers={**headers, "X-API-Key": keys.admin}, timeout=60)
            if not 400 <= response.status_code < 500:
                replayed.append(f"corpus {path}: {response.status_code} {response.text[:300]}")
    engine.dispose()
    for name, (status, output) in runs.items():
        tested = re.search(r"Tested: (\d+)", output)
        assert tested and int(tested.group(1)) >= 20, output[-3000:]
        assert status == 0, f"schemathesis ({name}, seed {SEED}) reports failures:\n{failures(output)}"
    assert replayed == []


# --- the document's patterns say exactly what the validators accept ---

_AWKWARD = [chr(code) for code in range(0x21)] + ["\x7f", "\x85", "\xa0", "\u1680", "\u2028", "\u3000", "\U0001f600"]
_CHARACTERS = st.sampled_from([*"aZ09_ -.@é名", "\u0130", "\u212a", *_AWKWARD])


def _texts(max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=_CHARACTERS, max_size=max_size) | st.text(max_size=max_size)


def _accepts(validate, value: object) -> bool:
    try:
        validate(value)
    except (ValueError, ValidationError):
        return False
    return True


def _valid(schema: dict) -> object:
    return jsonschema_rs.validator_for(schema).is_valid


PATTERN_CHECKS = settings(max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize(("name", "limit"), [(LabelName, 100), (PatientReference, 200)], ids=["label", "patient"])
def test_name_patterns_are_the_name_rules(name, limit) -> None:
    valid = _valid({"type": "string", "pattern": patterns.stripped_name(limit)})
    adapter = TypeAdapter(name)
    padded = st.tuples(_texts(4), st.text(alphabet="ab", min_size=limit - 3, max_size=limit + 3), _texts(4))

    @PATTERN_CHECKS
    @given(_texts(limit + 10) | padded.map("".join))
    def check(value: str) -> None:
        assert valid(value) == _accepts(adapter.validate_python, value)

    check()


def test_the_note_pattern_is_the_note_rule() -> None:
    valid = _valid({"type": "string", **NOTE_SCHEMA})

    @PATTERN_CHECKS
    @given(_texts(30))
    def check(note: str) -> None:
        assert valid(note) == _accepts(check_note, note)

    check()


def test_the_timestamp_pattern_is_what_the_api_takes() -> None:
    valid = _valid({"type": "string", "pattern": patterns.TIMESTAMP})
    near = r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,10})?)?(Z|[+-][0-9]{2}:[0-9]{2})?\Z"

    @PATTERN_CHECKS
    @given(st.from_regex(patterns.TIMESTAMP.replace("$", r"\Z"), fullmatch=True) | st.from_regex(near) | _texts(30))
    def check(text: str) -> None:
        assert valid(text) == _accepts(lambda value: RecordCreate(note="x", observed_at=timestamp_text(value)), text)

    check()


def test_the_clinical_fields_schema_is_their_rules() -> None:
    valid = _valid(ClinicalFields.model_json_schema())
    values = _texts(210) | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.none()

    @PATTERN_CHECKS
    @given(_texts(70), values)
    def check(name: str, value: object) -> None:
        if name not in ClinicalFields.model_fields:
            fields = {name: value}
            assert valid(fields) == _accepts(ClinicalFields.model_validate, fields)

    check()


def test_the_identifier_pattern_is_identifier_name() -> None:
    pattern = re.compile(identifier_name_pattern())
    words = ["patient", "MRN", "dob", "e-mail", "zip", "name", "first name", "Last_Name", "medical record", "ssn"]
    mixed_case = st.sampled_from(words).map(lambda word: "".join(c.upper() if i % 2 else c for i, c in enumerate(word)))
    names = st.lists(st.sampled_from(words) | mixed_case | _texts(3), max_size=5).map("".join)

    @PATTERN_CHECKS
    @given(names)
    def check(name: str) -> None:
        assert bool(pattern.search(name)) == identifier_name(name)

    check()
