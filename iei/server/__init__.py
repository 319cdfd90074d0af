"""The HTTP layer: Litestar routes that speak the IEI contract. Knows nothing of tensors."""

from iei.server.app import create_app

__all__ = ["create_app"]
