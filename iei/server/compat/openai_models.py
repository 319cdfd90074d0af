"""`GET /v1/models`: the OpenAI client's `models.list()`, which vLLM's embedding examples call first to learn
the served model's name."""

from __future__ import annotations

import time

from litestar import Request, get

from iei.server.errors import OPENAI_ERRORS
from iei.server.openapi import MODEL_LIST_RESPONSES
from iei.server.routes import AppState
from iei.server.schemas import ModelCard, ModelList


def build_model_list_handlers(state: AppState) -> list:
    started = int(time.time())

    @get("/v1/models", summary="The served model (OpenAI's models.list)", opt=OPENAI_ERRORS,
         responses=MODEL_LIST_RESPONSES)
    async def list_models(request: Request) -> ModelList:
        state.check_api_key(request)
        return ModelList([ModelCard(state.settings.model_name, started)])

    return [list_models]
