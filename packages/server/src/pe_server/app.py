"""The app factory: state, middlewares, routes and the backend's lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from pe_common.protocol import RequestLimits
from pe_server.admission import Admission
from pe_server.auth import ApiKeyAuth
from pe_server.backends import make_backend
from pe_server.backends.base import Backend
from pe_server.config import ServerConfig
from pe_server.metrics import ServerMetrics
from pe_server.middleware import MIDDLEWARES
from pe_server.routes import ROUTE_TABLES
from pe_server.state import STATE, ServerState


def create_app(config: ServerConfig, backend: Backend | None = None) -> web.Application:
    """A ready-to-run application; the backend starts in the app's startup (cleanup_ctx)."""
    app = web.Application(client_max_size=config.max_body_bytes, middlewares=MIDDLEWARES)
    state = ServerState(
        config=config,
        backend=backend if backend is not None else make_backend(config),
        metrics=ServerMetrics(),
        admission=Admission(
            config.max_concurrent_requests,
            config.max_bytes_in_flight,
            config.max_requests_per_key,
        ),
        auth=ApiKeyAuth(key.get_secret_value() for key in config.api_key),
        limits=RequestLimits(
            max_n=config.max_n,
            max_logprobs=max(config.max_logprobs, 1),
            max_prompts=config.max_prompts,
            max_content_parts=config.max_content_parts,
        ),
    )
    state.metrics.attach_backend(state.backend.stats, lambda: state.admission.num_requests)
    app[STATE] = state
    app.cleanup_ctx.append(decode_pool_ctx)
    app.cleanup_ctx.append(backend_ctx)
    for table in ROUTE_TABLES:
        app.add_routes(table)
    return app


async def decode_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """Threads that decode tensors and build prompts off the event loop."""
    state = app[STATE]
    state.decode_pool = ThreadPoolExecutor(state.config.decode_threads, "pe-decode")
    yield
    state.decode_pool.shutdown(wait=False, cancel_futures=True)


async def backend_ctx(app: web.Application) -> AsyncIterator[None]:
    backend = app[STATE].backend
    await backend.start()
    yield
    await backend.shutdown()
