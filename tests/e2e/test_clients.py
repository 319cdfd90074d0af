"""Other services' clients against a real tiny-CLIP server, each through its own package: vLLM-style chat
embeddings with `openai`, Cohere's v2 embed with `cohere.ClientV2`, Weaviate multi2vec-clip's inference API
with httpx (as its reference container defines it), and LangChain's `OpenAIEmbeddings`. The vectors must be
the ones `/embed` gives for the same image or text (test_retrieval checks those against transformers)."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
cohere = pytest.importorskip("cohere")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(clip_server):
    return clip_server


@pytest.fixture(scope="module")
def expected(server, seed_base64):
    """Unit vectors from /embed: the six seed images, and two texts."""
    images = httpx.post(server.url + "/embed", json={"inputs": seed_base64}, timeout=60).json()
    texts = httpx.post(server.url + "/embed", json={"inputs": ["a leather bag", "a red dress"], "modality": "text"},
                       timeout=60).json()
    return np.array(images), np.array(texts)


def data_uri(b64: str) -> str:
    return "data:image/png;base64," + b64


def test_vllm_chat_embeddings_through_the_openai_client(server, seed_base64, expected):
    from openai.types import CreateEmbeddingResponse
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="EMPTY")
    model = client.models.list().data[0].id  # as vLLM's examples start
    assert model == httpx.get(server.url + "/info").json()["served_model_name"]

    def chat_embeddings(content, **extra):
        return client.post("/embeddings", cast_to=CreateEmbeddingResponse,
                           body={"messages": [{"role": "user", "content": content}], "model": model,
                                 "encoding_format": "float", **extra})

    image = chat_embeddings([{"type": "image_url", "image_url": {"url": data_uri(seed_base64[2])}}])
    assert len(image.data) == 1 and image.model == model
    np.testing.assert_allclose(image.data[0].embedding, expected[0][2], atol=1e-5)
    text = chat_embeddings([{"type": "text", "text": "a leather bag"}])
    np.testing.assert_allclose(text.data[0].embedding, expected[1][0], atol=1e-5)
    short = chat_embeddings([{"type": "text", "text": "a leather bag"}], dimensions=8)
    np.testing.assert_allclose(short.data[0].embedding, _renormalised(expected[1][0][:8]), atol=1e-5)

    with pytest.raises(openai.UnprocessableEntityError) as error:
        chat_embeddings([{"type": "image_url", "image_url": {"url": data_uri(seed_base64[0])}},
                         {"type": "text", "text": "Represent the given image."}])
    assert "an image and text in one input" in error.value.message
    with pytest.raises(openai.UnprocessableEntityError) as error:
        chat_embeddings([{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}])
    assert "messages[0].content[0]: not a decodable image" in error.value.message

    raw = chat_embeddings([{"type": "text", "text": "a leather bag"}], normalize=False)  # vLLM's extra parameter
    assert np.linalg.norm(raw.data[0].embedding) != pytest.approx(1.0)
    np.testing.assert_allclose(_renormalised(np.array(raw.data[0].embedding)), expected[1][0], atol=1e-5)
    with pytest.raises(openai.UnprocessableEntityError) as error:
        chat_embeddings("a leather bag", input="a leather bag")
    assert "either `input` or `messages`" in error.value.message

    # The plain OpenAI call, base64-encoded by default, still works beside it.
    plain = client.embeddings.create(model=model, input=[seed_base64[2]])
    np.testing.assert_allclose(plain.data[0].embedding, expected[0][2], atol=1e-5)


def test_cohere_v2_embed_through_cohere_client(server, seed_base64, expected):
    images, texts = expected
    co = cohere.ClientV2(base_url=server.url, api_key="unused")
    response = co.embed(model="clip", input_type="image", images=[data_uri(b) for b in seed_base64[:3]],
                        embedding_types=["float", "int8", "uint8", "binary", "ubinary", "base64"])
    floats = np.array(response.embeddings.float_)
    np.testing.assert_allclose(floats, images[:3], atol=1e-5)
    np.testing.assert_array_equal(response.embeddings.int8, np.rint(floats * 127))
    np.testing.assert_array_equal(np.array(response.embeddings.uint8), np.rint(floats * 127) + 128)
    np.testing.assert_array_equal(response.embeddings.ubinary, np.packbits(floats > 0, axis=1))
    np.testing.assert_array_equal(response.embeddings.binary, np.packbits(floats > 0, axis=1).astype(int) - 128)
    decoded = [np.frombuffer(base64.b64decode(s), "<f4") for s in response.embeddings.base64]
    np.testing.assert_array_equal(decoded, floats.astype(np.float32))
    assert response.response_type == "embeddings_by_type" and response.meta.api_version.version == "2"

    response = co.embed(model="clip", input_type="search_query", texts=["a leather bag", "a red dress"],
                        embedding_types=["float"], output_dimension=8)
    assert response.texts == ["a leather bag", "a red dress"]
    np.testing.assert_allclose(response.embeddings.float_, [_renormalised(t[:8]) for t in texts], atol=1e-5)

    # `inputs` mixing texts and images comes back in request order
    inputs = [{"content": [{"type": "text", "text": "a red dress"}]},
              {"content": [{"type": "image_url", "image_url": {"url": data_uri(seed_base64[4])}}]},
              {"content": [{"type": "text", "text": "a leather bag"}]}]
    response = co.embed(model="clip", input_type="search_document", inputs=inputs, embedding_types=["float"])
    np.testing.assert_allclose(response.embeddings.float_, [texts[1], images[4], texts[0]], atol=1e-5)

    with pytest.raises(cohere.errors.UnprocessableEntityError) as error:
        co.embed(model="clip", input_type="search_query", texts=["a"], output_dimension=512)
    assert "`output_dimension` 512 is more than this model's 16 dimensions" in error.value.body["error"]
    with pytest.raises(cohere.errors.UnprocessableEntityError) as error:
        co.embed(model="clip", input_type="image", inputs=[inputs[0], {"content": [{"type": "image_url",
                                                                                    "image_url": {"url": "AAAA"}}]}])
    assert error.value.body["error"] == "inputs[1]: not a decodable image"


def test_weaviate_multi2vec_clip_inference_contract(server, seed_base64, expected):
    images, texts = expected
    for path in ("/.well-known/live", "/.well-known/ready"):
        response = httpx.get(server.url + path)
        assert response.status_code == 204 and response.content == b""
    meta = httpx.get(server.url + "/meta")
    assert meta.status_code == 200 and isinstance(meta.json(), dict)

    body = {"texts": ["a leather bag", "a red dress"], "images": seed_base64[:2]}
    response = httpx.post(server.url + "/vectorize", json=body, timeout=60)
    assert response.status_code == 200, response.text
    result = response.json()
    assert set(result) == {"textVectors", "imageVectors"}
    np.testing.assert_allclose(result["textVectors"], texts, atol=1e-5)
    np.testing.assert_allclose(result["imageVectors"], images[:2], atol=1e-5)

    # The module's Go client sends null for a list it has nothing in; both empty is an empty answer.
    only_images = httpx.post(server.url + "/vectorize", json={"texts": None, "images": seed_base64[:1]}, timeout=60)
    assert only_images.json()["textVectors"] == [] and len(only_images.json()["imageVectors"]) == 1
    assert httpx.post(server.url + "/vectorize", json={"texts": [], "images": []}).json() == {
        "textVectors": [], "imageVectors": []}

    bad = httpx.post(server.url + "/vectorize", json={"texts": ["x"], "images": [seed_base64[0], "AAAA"]}, timeout=60)
    assert bad.status_code == 422 and bad.json()["error"] == "images[1]: not a decodable image"


def test_langchain_openai_embeddings_embed_text_queries(server, expected):
    langchain_openai = pytest.importorskip("langchain_openai")
    # The settings docs/api.md gives: plain strings (no tiktoken: it would download its vocabulary and send
    # token ids), and `modality: text` in every request body.
    embeddings = langchain_openai.OpenAIEmbeddings(
        base_url=server.url + "/v1", api_key="unused", model="clip", check_embedding_ctx_length=False,
        model_kwargs={"extra_body": {"modality": "text"}})
    np.testing.assert_allclose(embeddings.embed_query("a leather bag"), expected[1][0], atol=1e-5)
    np.testing.assert_allclose(embeddings.embed_documents(["a leather bag", "a red dress"]), expected[1], atol=1e-5)

    # What LangChain sends with its default settings (token ids) gets a message saying which setting to change.
    response = httpx.post(server.url + "/v1/embeddings", json={"input": [[64, 2305]], "model": "clip"})
    assert response.status_code == 422
    assert "check_embedding_ctx_length=False" in response.json()["error"]["message"]


def _renormalised(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)
