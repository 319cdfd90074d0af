"""The typed messages between processes (iei/messages.py) and the pieces of the front-end link that need no
server: every message survives a round trip through its link's decoder, errors cross as their own class, and
the Rebalancer closes a keep-alive connection after its share of requests."""

from __future__ import annotations

import msgspec
import pytest

from backends.base import ModelInfo
from iei import errors
from iei.admission import Admission
from iei.engine_link import error_from
from iei.messages import (
    AttachSlab, BatchDone, BatchFailed, CancelCall, EmbedCall, EmbedDone, EmbedFailed, EngineToFrontend,
    FrontendToEngine, HealthQuery, HealthReply, Hello, MetricsQuery, MetricsReply, ModelLoadFailed, ModelReady,
    ModelToServer, Observed, RunImages, RunTexts, ServerToModel, Welcome,
)
from iei.preprocess.spec import PreprocessSpec
from iei.server.app import Rebalancer
from iei.slab import SlabLayout


def _info() -> ModelInfo:
    return ModelInfo(model_id="m", model_sha=None, model_type="vit", backend="torch", device="cpu", dtype="float32",
                     pooling="mean", embedding_dim=4, image_size=(8, 8))


def _spec() -> PreprocessSpec:
    return PreprocessSpec(resize="fixed", resample=2, output_height=8, output_width=8, resize_height=8, resize_width=8)


@pytest.mark.parametrize("union, message", [
    (ModelToServer, "ready"),
    (ModelToServer, ModelLoadFailed("no such model")),
    (ModelToServer, BatchDone(3, b"\0" * 32, 2, 4, 1.5, 0.01)),
    (ModelToServer, BatchFailed(3, "the model failed on this batch", 1.5, 0.01)),
    (ServerToModel, AttachSlab("psm_1", SlabLayout(slots=4, item_shape=(3, 8, 8)))),
    (ServerToModel, RunImages(7, [0, 5, 2])),
    (ServerToModel, RunTexts(8, b"\1" * 8, b"\1" * 2, 1, 2)),
    (FrontendToEngine, Hello(1, 1234)),
    (FrontendToEngine, EmbedCall(1, False, ["aGk=", b"raw"], ["base64", "raw"], True, None, "inputs", None)),
    (FrontendToEngine, CancelCall(1)),
    (FrontendToEngine, Observed("/embed", "success", 0.01, (0.001, 0.002, 0.003))),
    (FrontendToEngine, HealthQuery(2)),
    (FrontendToEngine, MetricsQuery(3)),
    (EngineToFrontend, "welcome"),
    (EngineToFrontend, EmbedDone(1, b"\0" * 16, 1, 4, 0.1, 0.2, 0.3)),
    (EngineToFrontend, EmbedFailed(1, "Overloaded", "at capacity", 2)),
    (EngineToFrontend, HealthReply(2, None)),
    (EngineToFrontend, MetricsReply(3, b"# metrics")),
])
def test_every_message_round_trips_through_its_links_decoder(union, message):
    if message == "ready":
        message = ModelReady(_info(), _spec(), None)
    elif message == "welcome":
        message = Welcome(_info(), _spec(), None)
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(message), type=union)
    assert decoded == message and type(decoded) is type(message)


def test_a_positional_list_is_refused():
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode([3, True, b"", 0, 0, 0.0, 0.0]), type=ModelToServer)


def test_errors_cross_the_link_as_their_own_class():
    overloaded = error_from(EmbedFailed(1, "Overloaded", "at capacity", 3))
    assert isinstance(overloaded, errors.Overloaded) and overloaded.retry_after_s == 3
    assert isinstance(error_from(EmbedFailed(1, "InputError", "inputs[2]: bad")), errors.InputError)
    unknown = error_from(EmbedFailed(1, "KeyError", "internal error"))  # never a class outside iei.errors
    assert type(unknown) is errors.IEIError and unknown.error_type == "Internal"


async def test_admission_is_one_count_with_busy_edges():
    edges = []
    admission = Admission(3, edges.append)
    admission.admit(2)
    with pytest.raises(errors.Overloaded):
        admission.admit(2)
    with pytest.raises(errors.Unhealthy):
        admission.admit(1, errors.Unhealthy("shutting down"))
    admission.admit(1)
    admission.release(2)
    assert not admission.idle.is_set()
    admission.release(1)
    assert admission.idle.is_set() and edges == [True, False]


async def test_rebalancer_closes_a_connection_after_its_share_of_requests():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    balancer = Rebalancer(app, every=3)
    closes = []
    for _ in range(7):
        sent = []

        async def send(message):
            sent.append(message)

        await balancer({"type": "http", "client": ("127.0.0.1", 5000)}, None, send)
        closes.append((b"connection", b"close") in sent[0]["headers"])
    assert closes == [False, False, True, False, False, True, False]
