"""pe-server: an OpenAI-compatible aiohttp server for LLMs fed with prompt embeddings."""

from pe_server.config import ServerConfig
from pe_server.version import __version__

__all__ = ["ServerConfig", "__version__", "create_app"]


def __getattr__(name: str) -> object:
    # The app factory pulls in the engine (torch); import it only when asked for.
    if name == "create_app":
        from pe_server.app import create_app

        return create_app
    raise AttributeError(name)
