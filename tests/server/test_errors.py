"""The one error path: every route's errors through the app's exception handlers (in-process, no server:
the app is built without running its lifespan, so no model is loaded and every model route is unhealthy)."""

from __future__ import annotations

import logging

import pytest
from litestar import Litestar, get
from litestar.testing import AsyncTestClient

from iei.config import Settings
from iei.errors import BATCH_FAILED, BackendFailed
from iei.server.app import create_app
from iei.server.errors import OPENAI_ERRORS, build_exception_handlers, classify_error

KEY = {"authorization": "Bearer s3cret"}


def app_without_model(**changes) -> Litestar:
    return create_app(Settings(model="not-loaded", batch_db=":memory:", **changes))


@pytest.mark.parametrize("path", ["/info", "/metrics", "/.well-known/ready", "/meta", "/health", "/batches"])
async def test_unhealthy_is_503_on_every_route(path):
    client = AsyncTestClient(app_without_model())  # requests without the lifespan: the model never loads
    response = await client.get(path, headers={"x-request-id": "abc"})
    assert response.status_code == 503, response.text
    assert response.json() == {"error": response.json()["error"], "error_type": "Unhealthy"}
    assert response.headers["x-request-id"] == "abc"


async def test_api_key_guards_info_and_model_list_not_health_or_metrics():
    client = AsyncTestClient(app_without_model(api_key="s3cret"))
    for path in ("/info", "/meta", "/batches"):
        response = await client.get(path)
        assert response.status_code == 401 and response.json()["error_type"] == "Unauthorized", path
        assert response.headers["www-authenticate"] == "Bearer"
        assert (await client.get(path, headers=KEY)).status_code == 503  # past the key: no model yet
    models = await client.get("/v1/models")
    assert models.status_code == 401 and models.json()["error"]["type"] == "authentication_error"
    assert (await client.get("/v1/models", headers=KEY)).status_code == 200
    for path in ("/health", "/metrics", "/.well-known/live", "/.well-known/ready"):
        assert (await client.get(path)).status_code in (204, 503), path  # open: never 401


async def test_routing_errors_use_the_contract_body():
    client = AsyncTestClient(app_without_model())
    missing = await client.get("/nope")
    assert missing.status_code == 404 and missing.json()["error_type"] == "NotFound"
    wrong_method = await client.get("/embed")
    assert wrong_method.status_code == 405 and wrong_method.json()["error_type"] == "MethodNotAllowed"
    assert "x-request-id" in wrong_method.headers


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += self.format(record) + "\n"


async def test_an_unexpected_error_is_a_500_naming_the_request_id_without_its_text():
    @get("/boom", sync_to_thread=False)
    def boom() -> None:
        raise RuntimeError("secret library text")

    @get("/v1/boom", sync_to_thread=False, opt=OPENAI_ERRORS)
    def openai_boom() -> None:
        raise RuntimeError("secret library text")

    app = Litestar([boom, openai_boom], exception_handlers=build_exception_handlers(lambda r: "req-7", 100))
    client = AsyncTestClient(app)
    records, logger = Records(), logging.getLogger("iei.server")
    logger.addHandler(records)
    try:
        response = await client.get("/boom")
    finally:
        logger.removeHandler(records)
    assert response.status_code == 500
    assert response.json() == {"error": "internal error (request id req-7)", "error_type": "Internal"}
    assert "secret" not in response.text and "secret library text" in records.text and "req-7" in records.text
    openai = await client.get("/v1/boom")
    assert openai.status_code == 500 and openai.json()["error"] == {
        "message": "internal error (request id req-7)", "type": "server_error", "code": 500}


def test_a_backend_failure_names_the_request_id():
    error = classify_error(BackendFailed(BATCH_FAILED), "req-9", 100)
    assert error.status == 424 and error.message == f"{BATCH_FAILED} (request id req-9)"
