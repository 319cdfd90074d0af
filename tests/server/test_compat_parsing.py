"""The pure parts of the other-service routes: Cohere's embedding types and chat-style content parts."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from iei.errors import ValidationFailed
from iei.server.compat.content import parse_messages, parse_parts
from iei.server.compat.embedding_types import (
    check_embedding_types, encode_embeddings, to_binary, to_int8, to_ubinary, to_uint8,
)
from iei.server.schemas import ChatMessage, ContentPart, ImageUrl


def unit_vectors(n: int, dim: int) -> np.ndarray:
    vectors = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_int8_keeps_the_direction_and_dot_products_in_proportion():
    vectors = unit_vectors(200, 512)
    quantized = to_int8(vectors).astype(np.float32)
    cosines = np.sum(quantized * vectors, axis=1) / np.linalg.norm(quantized, axis=1)
    assert cosines.min() > 0.995 and np.median(cosines) > 0.998
    assert np.abs(quantized / 127 - vectors).max() <= 0.5 / 127 + 1e-6  # one fixed scale, nothing clipped
    np.testing.assert_array_equal(to_uint8(vectors).astype(np.int16), quantized.astype(np.int16) + 128)


def test_binary_packs_sign_bits_high_bit_first():
    vectors = np.array([[1, -1, 1, 1, -1, -1, -1, 1, 0.5, -0.5]], dtype=np.float32)
    assert to_ubinary(vectors).tolist() == [[0b10110001, 0b10000000]]  # 10 dimensions: 2 bytes, zero-padded
    assert to_binary(vectors).tolist() == [[0b10110001 - 128, 0b10000000 - 128]]


def test_encode_embeddings_writes_each_requested_type():
    vectors = unit_vectors(2, 16)
    out = encode_embeddings(vectors, ("float", "base64", "ubinary"))
    assert np.allclose(out.float_, vectors)
    assert np.frombuffer(base64.b64decode(out.base64[1]), "<f4").tolist() == vectors[1].tolist()
    assert len(out.ubinary[0]) == 2 and out.int8 is None and out.uint8 is None and out.binary is None


def test_embedding_types_are_checked():
    assert check_embedding_types(None) == ("float",)
    assert check_embedding_types(["int8", "float", "int8"]) == ("int8", "float")
    with pytest.raises(ValidationFailed, match=r"embedding_types\[1\]: unknown type 'int4'"):
        check_embedding_types(["float", "int4"])
    with pytest.raises(ValidationFailed, match="cannot be empty"):
        check_embedding_types([])


def _image(url: str = "data:image/png;base64,AAAA") -> ContentPart:
    return ContentPart("image_url", image_url=ImageUrl(url))


def test_one_image_part_is_an_image_input_named_by_its_place():
    one = parse_messages([ChatMessage("user", [_image()])])
    assert one.image is not None and one.image.data == "data:image/png;base64,AAAA" and one.text is None
    assert one.place == ("messages[0].content", 0)
    one = parse_messages([ChatMessage("system", []), ChatMessage("user", [_image("abc")])])
    assert one.place == ("messages[1].content", 0) and one.text is None


def test_text_parts_are_joined_and_a_plain_string_content_is_text():
    one = parse_messages([ChatMessage("user", [ContentPart("text", text="a"), ContentPart("text", text="b")])])
    assert one.text == "a\nb" and one.image is None
    assert parse_messages([ChatMessage("user", "a cat")]).text == "a cat"


@pytest.mark.parametrize("parts, message", [
    ([_image(), ContentPart("text", text="x")], "an image and text in one input"),
    ([_image(), _image()], "2 images in one input"),
    ([ContentPart("input_audio")], r"inputs\[0\].content\[0\]: unsupported content type 'input_audio'"),
    ([ContentPart("text")], r"inputs\[0\].content\[0\]: a `text` part needs a `text` string"),
    ([ContentPart("image_url")], r"needs `image_url.url`"),
    ([], r"inputs\[0\]: no content"),
])
def test_bad_content_parts_are_refused_by_name(parts, message):
    places = [("inputs[0].content", i) for i in range(len(parts))]
    with pytest.raises(ValidationFailed, match=message):
        parse_parts(parts, places, "inputs[0]")
