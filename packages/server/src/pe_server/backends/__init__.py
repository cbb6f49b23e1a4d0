"""Backends behind the HTTP layer (see :class:`pe_server.backends.base.Backend`)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pe_server.backends.base import Backend
    from pe_server.config import ServerConfig

VLLM_MESSAGE = (
    "the 'vllm' backend is not available in this version of pe-server. Use --backend native "
    "(default) or --backend transformers. The vllm backend will need vLLM installed "
    "(pip install 'pe-server[vllm]'){found}."
)


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says what to do."""


def check_available(config: ServerConfig) -> None:
    """Raises BackendUnavailableError, with what to do, for a backend that cannot run here."""
    if config.backend == "vllm":
        found = importlib.util.find_spec("vllm") is not None
        raise BackendUnavailableError(
            VLLM_MESSAGE.format(
                found="; vLLM is installed, but pe does not drive it yet" if found else ""
            )
        )


def make_backend(config: ServerConfig) -> Backend:
    check_available(config)
    if config.backend == "native":
        from pe_server.backends.native import NativeBackend

        return NativeBackend(config)
    if config.backend == "transformers":
        from pe_server.backends.transformers_backend import TransformersBackend

        return TransformersBackend(config)
    raise BackendUnavailableError(f"unknown backend {config.backend!r}")
