"""The Open Inference Protocol (KServe v2) driven by its reference client, tritonclient, over HTTP and
gRPC against a real server (uvicorn in a thread, the gRPC service beside it) on a tiny trained model."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlmodel import Session
from tritonclient.utils import InferenceServerException

from anamnesis.service.app import create_app
from anamnesis.service.open_inference import messages
from anamnesis.service.open_inference.protocol import deserialize_bytes, serialize_bytes
from anamnesis.service.predicting import registry as registry_module
from anamnesis.service.predicting.errors import VersionNotServedError
from anamnesis.service.predicting.registry import DatabaseHealth, ModelRegistry
from anamnesis.storage.config import StorageConfig
from anamnesis.storage.engine import create_db_engine
from anamnesis.storage.errors import NotFoundError
from anamnesis.storage.migrate import upgrade
from anamnesis.storage.models import ModelStatus, ModelVersion, Prediction, row_id
from anamnesis.storage.repository import create_model_version, promote_model_version, reject_model_version
from tests.processes import environment, free_port, running, serving_in_thread
from tests.service_fixtures import LABELS, Keys, installation, make_keys, settings_for, train_and_promote

ROOT = Path(__file__).resolve().parent.parent
NOTES = ["resectable early tumour in the lobe", "egfr mutation with alk fusion"]
MODEL = "anamnesis"


@dataclass
class Server:
    http_port: int
    grpc_port: int
    keys: Keys
    config: StorageConfig
    app: object
    rejected: int
    candidate: int

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def http(self) -> httpclient.InferenceServerClient:
        return httpclient.InferenceServerClient(self.http_url, connection_timeout=30, network_timeout=60)

    def grpc(self) -> grpcclient.InferenceServerClient:
        return grpcclient.InferenceServerClient(self.grpc_url)

    @property
    def predict(self) -> dict[str, str]:
        return {"X-API-Key": self.keys.predict}

    def raw(self, method: str, path: str, **kwargs) -> httpx.Response:
        return httpx.request(method, f"http://{self.http_url}{path}", timeout=60, **kwargs)


def _stored_copy(engine, source_id: int) -> int:
    """A candidate version stored with the weights of `source_id` (never loaded: it does not serve)."""
    with Session(engine) as session:
        source = session.get(ModelVersion, source_id)
        version = create_model_version(
            session,
            parent_id=source_id,
            base_model=source.base_model,
            learner_config={},
            artifact_path=source.artifact_path,
            artifact_sha256=source.artifact_sha256,
            label_map=source.label_map,
            metrics=lambda _: {},
            data_window={},
            job_id=None,
            actor="test",
        )
        return row_id(version)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = StorageConfig.embedded(tmp_path_factory.mktemp("v2") / "home")
    upgrade(create_db_engine(config))
    engine, keys = installation(config)  # version 1 in production
    rejected = _stored_copy(engine, 1)
    with Session(engine) as session:
        reject_model_version(session, version_id=rejected, actor="test", reason="test")
    candidate = _stored_copy(engine, 1)
    engine.dispose()
    grpc_port = free_port()
    app = create_app(settings_for(config, grpc_port=grpc_port))
    with serving_in_thread(app) as port:
        yield Server(port, grpc_port, keys, config, app, rejected, candidate)


def _bytes_input(module, name: str, values: list[str], *, binary: bool = True, shape=None):
    """A BYTES input of the http or grpc client (binary: the http client's binary data or JSON)."""
    array = np.array([value.encode() for value in values], dtype=np.object_)
    if shape is not None:
        array = array.reshape(shape)
    tensor = module.InferInput(name, list(array.shape), "BYTES")
    if module is httpclient:
        return tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor.set_data_from_numpy(array)


def _note_input(module, notes=NOTES, *, binary=True, shape=None):
    return _bytes_input(module, "note", notes, binary=binary, shape=shape)


def _fields_input(module, fields, *, binary=True):
    return _bytes_input(module, "fields", [json.dumps(value) for value in fields], binary=binary)


def _version(result) -> str:
    response = result.get_response()
    return response["model_version"] if isinstance(response, dict) else response.model_version


def _texts(array) -> list[str]:
    return [value.decode() if isinstance(value, bytes) else str(value) for value in array.reshape(-1)]


def _stored_predictions(server: Server, prediction_ids: list[str]) -> int:
    server.app.state.service.writer.flush()
    engine = create_db_engine(server.config)
    with Session(engine) as session:
        count = session.scalar(
            select(func.count()).select_from(Prediction).where(Prediction.request_id.in_(prediction_ids))
        )
    engine.dispose()
    return count


def _check_answer(server: Server, result, rows: int = 2) -> None:
    labels = _texts(result.as_numpy("label"))
    probabilities = result.as_numpy("probabilities")
    prediction_ids = _texts(result.as_numpy("prediction_id"))
    assert len(labels) == rows and set(labels) <= set(LABELS)
    assert probabilities.dtype == np.float32 and probabilities.shape == (rows, 3)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-3)
    metadata = server.http().get_model_metadata(MODEL, _version(result))
    columns = metadata["parameters"]["labels"]
    assert labels == [columns[index] for index in probabilities.argmax(axis=1)]
    assert _stored_predictions(server, prediction_ids) == rows  # stored like /v1/predict's


# --- HTTP ---


def test_http_client_default_binary_mode(server: Server) -> None:
    client = server.http()
    inputs = [_note_input(httpclient), _fields_input(httpclient, [{"age": 61, "sex": "F"}, {}])]
    result = client.infer(MODEL, inputs, headers=server.predict, request_id="r1")
    response = result.get_response()
    assert response["id"] == "r1" and response["model_name"] == MODEL and response["model_version"] == "1"
    # No outputs named: the client asked for every output as binary data after the JSON.
    assert all("binary_data_size" in output["parameters"] and "data" not in output for output in response["outputs"])
    _check_answer(server, result)


def test_http_json_inputs_and_outputs(server: Server) -> None:
    client = server.http()
    inputs = [_note_input(httpclient, binary=False), _fields_input(httpclient, [{"age": 70}, {}], binary=False)]
    outputs = [httpclient.InferRequestedOutput(name, binary_data=False) for name in ("label", "probabilities")]
    outputs.append(httpclient.InferRequestedOutput("prediction_id", binary_data=True))
    result = client.infer(MODEL, inputs, outputs=outputs, headers=server.predict)
    by_name = {output["name"]: output for output in result.get_response()["outputs"]}
    assert by_name["label"]["data"] and by_name["probabilities"]["shape"] == [2, 3]
    assert len(by_name["probabilities"]["data"]) == 6 and "parameters" not in by_name["label"]
    assert by_name["prediction_id"]["parameters"]["binary_data_size"] > 0 and "data" not in by_name["prediction_id"]
    _check_answer(server, result)


def test_json_without_a_content_type_is_read(server: Server) -> None:
    body = {"inputs": [{"name": "note", "shape": [1], "datatype": "BYTES", "data": [NOTES[0]]}]}
    response = server.raw(
        "POST", f"/v2/models/{MODEL}/infer", content=json.dumps(body).encode(), headers=server.predict
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert "content-type" not in response.request.headers
    assert {output["name"] for output in response.json()["outputs"]} == {"label", "probabilities", "prediction_id"}


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(server: Server, algorithm: str) -> None:
    result = server.http().infer(
        MODEL, [_note_input(httpclient)], headers=server.predict, request_compression_algorithm=algorithm
    )
    _check_answer(server, result)


def test_a_zip_bomb_is_refused_at_the_body_limit(server: Server) -> None:
    bomb = gzip.compress(b" " * 20_000_000)  # 20 MB of JSON whitespace in about 20 kB
    assert len(bomb) < 100_000
    response = server.raw(
        "POST", f"/v2/models/{MODEL}/infer", content=bomb, headers={**server.predict, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 413 and "decompressed" in response.json()["error"]
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    body = json.dumps({"inputs": [{"name": "note", "shape": [1], "datatype": "BYTES", "data": [NOTES[1]]}]}).encode()
    deflated = raw_deflate.compress(body) + raw_deflate.flush()  # deflate without zlib's header: also read
    headers = {**server.predict, "Content-Encoding": "deflate"}
    assert server.raw("POST", f"/v2/models/{MODEL}/infer", content=deflated, headers=headers).status_code == 200
    refused = server.raw(
        "POST", f"/v2/models/{MODEL}/infer", content=body, headers={**headers, "Content-Encoding": "br"}
    )
    assert refused.status_code == 415 and set(refused.json()) == {"error"}
    broken = server.raw(
        "POST", f"/v2/models/{MODEL}/infer", content=bomb[:500], headers={**headers, "Content-Encoding": "gzip"}
    )
    assert broken.status_code == 400 and "gzip" in broken.json()["error"]


def test_server_and_model_metadata(server: Server) -> None:
    client = server.http()
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert server.raw("GET", "/v2/health/live").json() == {"live": True}
    assert server.raw("GET", "/v2/health/ready").json() == {"ready": True}
    assert server.raw("GET", f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    metadata = client.get_server_metadata()
    assert metadata["name"] == "anamnesis" and metadata["version"] and "binary_tensor_data" in metadata["extensions"]
    model = client.get_model_metadata(MODEL)
    assert model["name"] == MODEL and model["versions"] == ["1"] and model["platform"].startswith("anamnesis-")
    assert [tensor["name"] for tensor in model["inputs"]] == ["note", "fields", "site"]
    assert {tensor["name"]: tensor["shape"] for tensor in model["outputs"]}["probabilities"] == [-1, 3]
    assert model["parameters"]["labels"] == sorted(LABELS[:3])
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("other")
    assert unknown.value.status() == "404" and "unknown model" in unknown.value.message()


def test_version_routes_serve_production_and_archived_versions_only(server: Server) -> None:
    client = server.http()
    assert client.get_model_metadata(MODEL, "1")["versions"] == ["1"]
    assert client.is_model_ready(MODEL, "1")
    result = client.infer(MODEL, [_note_input(httpclient)], model_version="1", headers=server.predict)
    assert result.get_response()["model_version"] == "1"
    _check_answer(server, result)
    for version, reason in [
        (server.rejected, "is rejected"),
        (server.candidate, "is candidate"),
        (999, "no version 999"),
        ("abc", "versions are numbers"),
    ]:
        assert not client.is_model_ready(MODEL, str(version))
        for answer in (
            server.raw("GET", f"/v2/models/{MODEL}/versions/{version}"),
            server.raw("GET", f"/v2/models/{MODEL}/versions/{version}/ready"),
            server.raw(
                "POST",
                f"/v2/models/{MODEL}/versions/{version}/infer",
                json={"inputs": [{"name": "note", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
                headers=server.predict,
            ),
        ):
            assert answer.status_code == 404 and set(answer.json()) == {"error"}
            assert reason in answer.json()["error"]
        with pytest.raises(InferenceServerException) as refused:
            client.infer(MODEL, [_note_input(httpclient)], model_version=str(version), headers=server.predict)
        assert refused.value.status() == "404"


def test_outputs_selection(server: Server) -> None:
    client = server.http()
    only = client.infer(
        MODEL, [_note_input(httpclient)], outputs=[httpclient.InferRequestedOutput("label")], headers=server.predict
    )
    assert [output["name"] for output in only.get_response()["outputs"]] == ["label"]
    assert only.as_numpy("probabilities") is None and len(only.as_numpy("label")) == 2
    with pytest.raises(InferenceServerException) as unknown:
        client.infer(
            MODEL,
            [_note_input(httpclient)],
            outputs=[httpclient.InferRequestedOutput("logits")],
            headers=server.predict,
        )
    assert unknown.value.status() == "400" and "unknown output 'logits'" in unknown.value.message()


def test_n_by_1_shapes(server: Server) -> None:
    for binary in (True, False):
        result = server.http().infer(
            MODEL, [_note_input(httpclient, shape=(2, 1), binary=binary)], headers=server.predict
        )
        _check_answer(server, result)
    with pytest.raises(InferenceServerException) as wrong:
        server.http().infer(MODEL, [_note_input(httpclient, NOTES * 2, shape=(2, 2))], headers=server.predict)
    assert wrong.value.status() == "400" and "[N, 1]" in wrong.value.message()


def test_every_failure_answers_an_error_body(server: Server) -> None:
    client = server.http()
    with pytest.raises(InferenceServerException) as no_key:
        client.infer(MODEL, [_note_input(httpclient)])
    assert no_key.value.status() == "401" and "missing API key" in no_key.value.message()
    with pytest.raises(InferenceServerException) as wrong_key:
        client.infer(MODEL, [_note_input(httpclient)], headers={"X-API-Key": "anm_not-a-real-key"})
    assert wrong_key.value.status() == "401" and "invalid API key" in wrong_key.value.message()
    # FP32 binary data is sliced off the body like any other, then refused by name and datatype.
    numbers = httpclient.InferInput("note", [2], "FP32").set_data_from_numpy(np.array([1.0, 2.0], dtype=np.float32))
    with pytest.raises(InferenceServerException) as wrong_type:
        client.infer(MODEL, [numbers, _fields_input(httpclient, [{}, {}])], headers=server.predict)
    assert wrong_type.value.status() == "400" and "'note' must be BYTES, got FP32" in wrong_type.value.message()
    infer = f"/v2/models/{MODEL}/infer"
    note = {"name": "note", "shape": [1], "datatype": "BYTES", "data": ["x"]}
    answers = {
        401: server.raw("POST", infer, json={"inputs": [note]}),
        400: server.raw("POST", infer, json={"inputs": [{**note, "shape": [2]}]}, headers=server.predict),
        413: server.raw("POST", infer, content=b"{" * 3_000_000, headers=server.predict),
        422: server.raw("GET", f"/v2/models/{'m' * 200}"),
        404: server.raw("GET", "/v2/no/such/route"),
        405: server.raw("GET", infer),
    }
    for status, answer in answers.items():
        assert answer.status_code == status and set(answer.json()) == {"error"}, (status, answer.text)
    assert answers[401].headers["www-authenticate"] == "Bearer"
    assert "shape" in answers[400].json()["error"]
    bad_json = server.raw("POST", infer, content=b'{"inputs": [', headers=server.predict)
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]
    assert server.raw("GET", "/v2").json()["name"] == "anamnesis"


def test_binary_inputs_are_checked_against_their_declared_sizes(server: Server) -> None:
    infer = f"/v2/models/{MODEL}/infer"
    encoded = serialize_bytes(["a note about the lobe"])
    for size, extra, message in [
        (len(encoded) + 4, b"", "runs past the end"),
        (len(encoded), b"\0\0", "no input's binary_data_size covers"),
        (len(encoded) - 2, b"", "ends inside an element"),
    ]:
        header = json.dumps(
            {"inputs": [{"name": "note", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": size}}]}
        ).encode()
        body = header + encoded[:size] + extra if size <= len(encoded) else header + encoded
        answer = server.raw(
            "POST", infer, content=body, headers={**server.predict, "Inference-Header-Content-Length": str(len(header))}
        )
        assert answer.status_code == 400 and message in answer.json()["error"], answer.text


def test_without_a_model_readiness_and_inference_answer_503(sqlite_config: StorageConfig) -> None:
    engine = create_db_engine(sqlite_config)
    keys = make_keys(engine)
    engine.dispose()
    grpc_port = free_port()
    body = {"inputs": [{"name": "note", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    with TestClient(create_app(settings_for(sqlite_config, grpc_port=grpc_port))) as client:
        answers = [
            client.get("/v2/health/ready"),
            client.get(f"/v2/models/{MODEL}/ready"),
            client.post(f"/v2/models/{MODEL}/infer", json=body, headers=keys.header("predict")),
        ]
        assert [answer.status_code for answer in answers] == [503, 503, 503]
        assert all("no model version is in production" in answer.json()["error"] for answer in answers)
        assert answers[0].json()["ready"] is False and client.get(f"/v2/models/{MODEL}").json()["versions"] == []
        rpc = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert rpc.is_server_live() and not rpc.is_server_ready() and not rpc.is_model_ready(MODEL)
        with pytest.raises(InferenceServerException) as unavailable:
            rpc.infer(MODEL, [_note_input(grpcclient)], headers={"x-api-key": keys.predict})
        assert unavailable.value.status() == "StatusCode.UNAVAILABLE"


# --- gRPC ---


def test_grpc_client_live_ready_metadata_and_infer(server: Server) -> None:
    client = server.grpc()
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    metadata = client.get_server_metadata(as_json=True)
    assert metadata["name"] == "anamnesis" and "binary_tensor_data" in metadata["extensions"]
    model = client.get_model_metadata(MODEL, as_json=True)
    assert model["versions"] == ["1"] and [tensor["name"] for tensor in model["inputs"]] == ["note", "fields", "site"]
    inputs = [_note_input(grpcclient), _fields_input(grpcclient, [{"age": 61}, {}])]
    result = client.infer(MODEL, inputs, headers={"x-api-key": server.keys.predict}, request_id="g1")
    response = result.get_response()
    assert response.id == "g1" and response.model_version == "1"
    assert json.loads(response.parameters["labels"].string_param) == sorted(LABELS[:3])
    _check_answer(server, result)
    versioned = client.infer(
        MODEL, [_note_input(grpcclient, shape=(2, 1))], model_version="1", headers={"x-api-key": server.keys.admin}
    )
    assert versioned.get_response().model_version == "1" and versioned.as_numpy("label").shape == (2,)
    only = client.infer(
        MODEL,
        [_note_input(grpcclient)],
        outputs=[grpcclient.InferRequestedOutput("probabilities")],
        headers={"authorization": f"Bearer {server.keys.predict}"},
    )
    assert [output.name for output in only.get_response().outputs] == ["probabilities"]


def test_grpc_failures_are_statuses(server: Server) -> None:
    client = server.grpc()
    inputs = [_note_input(grpcclient)]
    cases = [
        ({}, MODEL, "", inputs, "StatusCode.UNAUTHENTICATED", "missing API key"),
        ({"x-api-key": "anm_not-a-key"}, MODEL, "", inputs, "StatusCode.UNAUTHENTICATED", "invalid API key"),
        ({"x-api-key": server.keys.predict}, "other", "", inputs, "StatusCode.NOT_FOUND", "unknown model"),
        ({"x-api-key": server.keys.predict}, MODEL, str(server.rejected), inputs, "StatusCode.NOT_FOUND", "rejected"),
        (
            {"x-api-key": server.keys.predict},
            MODEL,
            "",
            [_note_input(grpcclient, ["a", "b", "c"]), _fields_input(grpcclient, [{}, {}])],
            "StatusCode.INVALID_ARGUMENT",
            "same number of records",
        ),
    ]
    for headers, model, version, tensors, status, message in cases:
        with pytest.raises(InferenceServerException) as failed:
            client.infer(model, tensors, model_version=version, headers=headers)
        assert failed.value.status() == status and message in failed.value.message(), failed.value
    with pytest.raises(InferenceServerException) as not_found:
        client.get_model_metadata(MODEL, "999")
    assert not_found.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as not_served:
        client.is_model_ready(MODEL, str(server.candidate))
    assert not_served.value.status() == "StatusCode.NOT_FOUND"


def test_grpc_typed_bytes_contents(server: Server) -> None:
    """Inputs as `contents.bytes_contents` (tritonclient always sends raw_input_contents)."""
    request = messages.ModelInferRequest(model_name=MODEL, id="typed")
    note = request.inputs.add(name="note", datatype="BYTES", shape=[2])
    note.contents.bytes_contents.extend(note_text.encode() for note_text in NOTES)
    site = request.inputs.add(name="site", datatype="BYTES", shape=[2, 1])
    site.contents.bytes_contents.extend([b"site_a", b"site_b"])
    request.outputs.add(name="label")
    with grpc.insecure_channel(server.grpc_url) as channel:
        infer = channel.unary_unary(
            f"/{messages.SERVICE}/ModelInfer",
            request_serializer=messages.ModelInferRequest.SerializeToString,
            response_deserializer=messages.ModelInferResponse.FromString,
        )
        response = infer(request, metadata=[("x-api-key", server.keys.predict)], timeout=60)
        assert response.id == "typed" and [output.name for output in response.outputs] == ["label"]
        assert len(deserialize_bytes(response.raw_output_contents[0], "label")) == 2
        mixed = messages.ModelInferRequest()
        mixed.CopyFrom(request)
        mixed.raw_input_contents.extend([serialize_bytes(NOTES), serialize_bytes(["a", "b"])])
        with pytest.raises(grpc.RpcError) as refused:
            infer(mixed, metadata=[("x-api-key", server.keys.predict)], timeout=60)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "contents" in refused.value.details()


# --- versions: the cache, and readiness through a hot swap ---


def test_descriptor_module_matches_the_proto() -> None:
    script = ROOT / "scripts" / "generate_open_inference_descriptor.py"
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_registry_loads_addressed_versions_on_demand_into_a_bounded_cache(
    sqlite_config: StorageConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_db_engine(sqlite_config)
    loads: list[int] = []

    def fake_load(version, *, max_length, mode):
        loads.append(row_id(version))
        return SimpleNamespace(version_id=row_id(version), kind="pytorch", labels=tuple(version.label_map))

    monkeypatch.setattr(registry_module, "load_model", fake_load)
    with Session(engine) as session:
        ids = []
        for index in range(5):
            version = create_model_version(
                session,
                parent_id=None,
                base_model="tiny",
                learner_config={},
                artifact_path=f"/nowhere/{index}",
                artifact_sha256="0" * 64,
                label_map=["a", "b"],
                metrics=lambda _: {},
                data_window={},
                job_id=None,
                actor="test",
            )
            ids.append(row_id(version))
        for version_id in ids[:4]:  # each promoted in turn: 1-3 archived, 4 in production
            promote_model_version(
                session,
                version_id=version_id,
                actor="test",
                reason="test",
                allow_rejected=True,
                runtime={"kind": "pytorch", "reason": "test"},
            )
    registry = ModelRegistry(engine, max_length=32, runtime_mode="auto", poll_s=60, health=DatabaseHealth())
    assert registry.refresh() and registry.current.version_id == ids[3] and loads == [ids[3]]
    assert registry.served_versions() == [ids[3], ids[2], ids[1], ids[0]]
    assert registry.version(ids[3]) is registry.current and loads == [ids[3]]
    first = registry.version(ids[0])
    assert registry.version(ids[0]) is first and loads == [ids[3], ids[0]]  # loaded once, then cached
    registry.version(ids[1])
    registry.version(ids[2])  # a third: the least recently used (ids[0]) goes
    registry.version(ids[1])
    assert loads == [ids[3], ids[0], ids[1], ids[2]]
    registry.version(ids[0])
    assert loads[-1] == ids[0] and registry.version_loads == 4
    with pytest.raises(VersionNotServedError, match="candidate"):
        registry.version(ids[4])
    with pytest.raises(NotFoundError):
        registry.version(99)
    # A version promoted elsewhere that is already cached becomes current without a reload.
    with Session(engine) as session:
        promote_model_version(
            session,
            version_id=ids[0],
            actor="test",
            reason="test",
            allow_rejected=True,
            runtime={"kind": "pytorch", "reason": "test"},
        )
        assert session.get(ModelVersion, ids[3]).status == ModelStatus.archived
    count = len(loads)
    assert registry.refresh() and registry.current.version_id == ids[0] and len(loads) == count
    assert registry.version(ids[3]).version_id == ids[3] and loads[count:] == [ids[3]]  # not kept: loaded again
    engine.dispose()


def test_model_stays_ready_through_a_hot_swap_and_the_old_version_serves_archived(server: Server) -> None:
    """KServe's model readiness: while a new version is promoted and swapped in, the model answers ready
    (both transports) and inference keeps answering; then the previous version serves by number."""
    readiness: list[tuple[bool, bool]] = []
    stop = threading.Event()

    def probe() -> None:
        http, rpc = server.http(), server.grpc()
        while not stop.is_set():
            readiness.append((http.is_model_ready(MODEL), rpc.is_model_ready(MODEL)))
            time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    engine = create_db_engine(server.config)
    try:
        new = str(train_and_promote(engine, server.config, period="2", seed=2))
        client = server.http()
        deadline = time.monotonic() + 30
        versions = set()
        while time.monotonic() < deadline and new not in versions:
            result = client.infer(MODEL, [_note_input(httpclient)], headers=server.predict)
            versions.add(result.get_response()["model_version"])
        assert new in versions
    finally:
        stop.set()
        prober.join(timeout=30)
        engine.dispose()
    assert readiness and all(http and rpc for http, rpc in readiness), readiness
    assert client.get_model_metadata(MODEL)["versions"] == [new, "1"]
    assert client.get_model_metadata(MODEL, new)["parameters"]["labels"] == [*sorted(LABELS[:3]), "immunotherapy"]
    registry = server.app.state.service.registry
    assert registry.version_loads == 0
    old = client.infer(MODEL, [_note_input(httpclient)], model_version="1", headers=server.predict)
    assert old.get_response()["model_version"] == "1" and old.as_numpy("probabilities").shape == (2, 3)
    rpc_old = server.grpc().infer(
        MODEL, [_note_input(grpcclient)], model_version="1", headers={"x-api-key": server.keys.predict}
    )
    assert rpc_old.get_response().model_version == "1"
    assert registry.version_loads == 1  # loaded on its first request, then kept


@pytest.mark.slow
def test_serve_starts_the_grpc_service(server: Server, tmp_path: Path) -> None:
    """`anamnesis serve --grpc-port` as a real process (on the module's database)."""
    port, grpc_port = free_port(), free_port()
    args = ["serve", "--api-only", "--port", str(port), "--grpc-port", str(grpc_port)]
    with running(args, environment(server.config), tmp_path / "serve.log", port=port):
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_live() and client.get_server_metadata().name == "anamnesis"
        result = client.infer(MODEL, [_note_input(grpcclient)], headers={"x-api-key": server.keys.predict})
        assert len(result.as_numpy("label")) == 2
