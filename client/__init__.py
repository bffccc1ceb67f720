"""Client of the msde service: Python API (``client.api``), ``msde-client`` CLI, try-it page.

It stands beside the service and imports only ``handler.schema`` from it (the response
models), never the model code.
"""

from client.api import (
    MsdeClient,
    MsdeError,
    ModelNotLoaded,
    ModelNotReady,
    RequestRefused,
    Result,
    ServerDown,
    ServerError,
    TokenRequired,
)

__all__ = [
    "MsdeClient",
    "MsdeError",
    "ModelNotLoaded",
    "ModelNotReady",
    "RequestRefused",
    "Result",
    "ServerDown",
    "ServerError",
    "TokenRequired",
]
