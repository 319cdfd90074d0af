"""All routes of other services' shapes, for the app factory to register."""

from __future__ import annotations

from litestar.handlers import HTTPRouteHandler

from iei.server.compat.cohere import build_cohere_handlers
from iei.server.compat.openai_models import build_model_list_handlers
from iei.server.compat.weaviate import build_weaviate_handlers
from iei.server.routes import AppState


def build_compat_handlers(state: AppState) -> list[HTTPRouteHandler]:
    return build_cohere_handlers(state) + build_weaviate_handlers(state) + build_model_list_handlers(state)
