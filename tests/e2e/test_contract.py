"""The HTTP contract (../shared/CONTRACT.md) through real HTTP against a real `iei serve`."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.e2e.reference import cosine, reference_embeddings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(vit_server):
    with httpx.Client(base_url=vit_server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tiny_model, seed_images) -> np.ndarray:
    return reference_embeddings(tiny_model("vit"), seed_images)


def jpeg(width: int = 64, height: int = 48, color=(200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, "JPEG")
    return buf.getvalue()


def assert_error(response: httpx.Response, status: int, error_type: str, contains: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_type"] == error_type
    assert contains in body["error"]
    assert "Traceback" not in response.text


# -- the original server's request ------------------------------------------------------------

def test_original_request_returns_reference_vectors(client, seed_base64, reference):
    response = client.post("/embed", json={"inputs": seed_base64, "normalize": False})
    assert response.status_code == 200
    vectors = np.array(response.json())
    assert vectors.shape == reference.shape
    assert cosine(vectors, reference).min() >= 0.9999
    np.testing.assert_allclose(vectors, reference, atol=1e-4)


def test_default_is_l2_normalised_in_input_order(client, seed_base64, reference):
    vectors = np.array(client.post("/embed", json={"inputs": seed_base64[::-1]}).json())
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosine(vectors, reference[::-1]).min() >= 0.9999


def test_single_string_input_gives_a_list_of_one_vector(client, seed_base64, reference):
    vectors = client.post("/embed", json={"inputs": seed_base64[0]}).json()
    assert len(vectors) == 1 and cosine(np.array(vectors[0]), reference[0]) >= 0.9999


def test_data_uri_prefix_is_stripped(client, seed_base64, reference):
    vectors = client.post("/embed", json={"inputs": ["data:image/png;base64," + seed_base64[1]]}).json()
    assert cosine(np.array(vectors[0]), reference[1]) >= 0.9999


def test_dimensions_truncates_then_normalises(client, seed_base64, reference):
    vectors = np.array(client.post("/embed", json={"inputs": seed_base64[:2], "dimensions": 8}).json())
    assert vectors.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    raw = np.array(client.post("/embed", json={"inputs": seed_base64[:2], "dimensions": 8, "normalize": False}).json())
    np.testing.assert_allclose(raw, reference[:2, :8], atol=1e-4)


@pytest.mark.parametrize("path", ["/", "/invocations"])
def test_tei_aliases_behave_as_embed(client, path, seed_base64, reference):
    response = client.post(path, json={"inputs": seed_base64[:1], "normalize": False})
    assert response.status_code == 200
    np.testing.assert_allclose(response.json(), reference[:1], atol=1e-4)


def test_multipart_files_in_part_order_with_form_options(client, seed_images, reference):
    files = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(seed_images[:3])]
    response = client.post("/embed", files=files, data={"normalize": "false"})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json(), reference[:3], atol=1e-4)


def test_multipart_options_from_query(client, seed_images):
    files = [("file", ("a.png", seed_images[0], "image/png"))]
    vectors = client.post("/embed?dimensions=4", files=files).json()
    assert np.array(vectors).shape == (1, 4)


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream"])
def test_raw_image_body(client, seed_images, reference, content_type):
    response = client.post("/embed?normalize=false", content=seed_images[2], headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json(), reference[2:3], atol=1e-4)


def test_timing_headers(client, seed_base64):
    response = client.post("/embed", json={"inputs": seed_base64[:2]})
    for name in ("x-total-time", "x-preprocess-time", "x-queue-time", "x-inference-time"):
        assert float(response.headers[name]) >= 0
    assert float(response.headers["x-total-time"]) >= float(response.headers["x-inference-time"])
    timing = response.headers["server-timing"]
    for stage in ("preprocess;dur=", "queue;dur=", "inference;dur=", "total;dur="):
        assert stage in timing
    assert response.headers["x-request-id"]


# -- OpenAI-compatible route ------------------------------------------------------------------

def test_openai_float(client, seed_base64, reference):
    response = client.post("/v1/embeddings", json={"input": seed_base64[:2], "model": "whatever"})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
    assert body["model"] == str(client.get("/info").json()["served_model_name"])
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" for d in body["data"])
    vectors = np.array([d["embedding"] for d in body["data"]])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosine(vectors, reference[:2]).min() >= 0.9999


def test_openai_base64_is_little_endian_float32(client, seed_base64):
    floats = client.post("/v1/embeddings", json={"input": seed_base64[0]}).json()["data"][0]["embedding"]
    encoded = client.post("/v1/embeddings", json={"input": seed_base64[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(encoded["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(decoded, floats, atol=1e-6)


def test_openai_dimensions(client, seed_base64):
    body = client.post("/v1/embeddings", json={"input": [seed_base64[0]], "dimensions": 5}).json()
    assert len(body["data"][0]["embedding"]) == 5


def test_openai_errors_use_openai_shape(client):
    response = client.post("/v1/embeddings", json={"input": []})
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"} and error["code"] == 400
    response = client.post("/v1/embeddings", json={"input": ["@@@"]})
    assert response.status_code == 422 and "input[0]" in response.json()["error"]["message"]


# -- info, health, metrics ----------------------------------------------------------------------

def test_info_fields(client, tiny_model):
    info = client.get("/info").json()
    assert info["model_id"] == str(tiny_model("vit"))
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["backend"] == "torch" and info["device"] == "cpu" and info["model_dtype"] == "float32"
    assert info["embedding_dim"] == 32
    assert info["image_size"] == {"height": 224, "width": 224}
    for key in ("model_sha", "served_model_name", "max_concurrent_requests", "max_batch_size", "max_batch_delay_ms",
                "max_client_batch_size", "max_image_pixels", "payload_limit", "preprocess_workers", "version"):
        assert key in info
    assert info["max_client_batch_size"] == 16 and info["preprocess_workers"] == 2
    assert info["image_formats"] == ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]
    assert info["decode_timeout_ms"] == 10_000 and info["request_timeout_ms"] == 0
    assert info["allow_url_inputs"] is False


def test_health(client):
    response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"message": "OK"}


def test_metrics_exposition(client, seed_base64):
    client.post("/embed", json={"inputs": seed_base64[:1]})
    client.post("/embed", json={"inputs": []})
    text = client.get("/metrics").text
    assert 'iei_requests_total{outcome="success",route="/embed"}' in text
    assert 'iei_failures_total{error_type="Empty"}' in text
    for name in ("iei_request_duration_seconds_bucket", "iei_preprocess_duration_seconds_bucket",
                 "iei_queue_duration_seconds_bucket", "iei_inference_duration_seconds_bucket", "iei_batch_size_bucket",
                 "iei_queue_size", "iei_inflight_images", "iei_images_embedded_total"):
        assert name in text


def test_openapi_docs_served(client):
    schema = client.get("/docs/openapi.json")
    assert schema.status_code == 200 and "/embed" in schema.json()["paths"]


# -- the error table ----------------------------------------------------------------------------

def test_empty_inputs(client):
    assert_error(client.post("/embed", json={"inputs": []}), 400, "Empty")


def test_bad_base64_names_the_index(client, seed_base64):
    assert_error(client.post("/embed", json={"inputs": [seed_base64[0], "not base64!"]}), 422, "Validation", "inputs[1]")


def test_not_an_image_names_the_index(client):
    payload = base64.b64encode(b"hello, I am text pretending to be an image").decode()
    assert_error(client.post("/embed", json={"inputs": [payload]}), 422, "Validation", "inputs[0]")


@pytest.mark.parametrize("body", [b"{not json", b'{"inputs": 5}', b'{"inputs": ["a"], "normalize": "yes"}', b"[]"])
def test_malformed_json(client, body):
    assert_error(client.post("/embed", content=body, headers={"content-type": "application/json"}), 422, "Validation")


def test_too_many_inputs_names_the_limit(client):
    payload = base64.b64encode(jpeg()).decode()
    assert_error(client.post("/embed", json={"inputs": [payload] * 17}), 422, "Validation", "16")


@pytest.mark.parametrize("dimensions", [0, -1, 33])
def test_dimensions_out_of_range(client, seed_base64, dimensions):
    assert_error(client.post("/embed", json={"inputs": seed_base64[:1], "dimensions": dimensions}), 422, "Validation",
                 "dimensions")


def test_payload_too_large_is_json(client):
    big = "A" * (5 * 1024 * 1024)
    assert_error(client.post("/embed", json={"inputs": [big]}), 413, "PayloadTooLarge")


def test_unsupported_media_type(client):
    assert_error(client.post("/embed", content=b"hello", headers={"content-type": "text/plain"}), 415,
                 "UnsupportedMediaType")


def test_unknown_route_is_json_404(client):
    response = client.get("/nope")
    assert response.status_code == 404 and response.json()["error_type"] == "NotFound"


def test_server_keeps_serving_after_errors(client, seed_base64, reference):
    vectors = client.post("/embed", json={"inputs": seed_base64[:1], "normalize": False}).json()
    np.testing.assert_allclose(vectors, reference[:1], atol=1e-4)
