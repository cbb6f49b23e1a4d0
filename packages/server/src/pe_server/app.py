"""The app factory: state, middlewares, routes and the backend's lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from pe_common.protocol.limits import DEFAULT_LIMITS, MAX_CHARS_PER_TOKEN, RequestLimits
from pe_engine.inputs.embeds_store import EmbedsStore
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
        limits=request_limits(config),
        embeds_store=EmbedsStore(
            max_bytes=config.embeds_store_bytes,
            ttl=config.embeds_ttl,
            max_bytes_per_tenant=config.embeds_store_bytes_per_key,
        ),
    )
    state.metrics.attach_backend(state.backend.stats, lambda: state.admission.num_requests)
    state.metrics.attach_embeds_store(lambda: state.embeds_store.stats)
    app[STATE] = state
    app.cleanup_ctx.append(decode_pool_ctx)
    app.cleanup_ctx.append(backend_ctx)
    app.cleanup_ctx.append(chat_render_ctx)
    for table in ROUTE_TABLES:
        app.add_routes(table)
    return app


def request_limits(config: ServerConfig, max_model_len: int | None = None) -> RequestLimits:
    """The wire-boundary caps; the text cap follows the context length once it is known."""
    prompt_chars = config.max_prompt_chars
    if prompt_chars is None and max_model_len:
        prompt_chars = MAX_CHARS_PER_TOKEN * max_model_len
    return RequestLimits(
        max_n=config.max_n,
        max_logprobs=max(config.max_logprobs, 1),
        max_prompts=config.max_prompts,
        max_content_parts=config.max_content_parts,
        max_seqs_per_request=config.max_seqs_per_request,
        max_prompt_chars=prompt_chars or DEFAULT_LIMITS.max_prompt_chars,
        max_total_prompt_chars=config.max_total_prompt_chars,
    )


async def decode_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """Threads that decode tensors and build prompts off the event loop."""
    state = app[STATE]
    state.decode_pool = ThreadPoolExecutor(state.config.decode_threads, "pe-decode")
    yield
    state.decode_pool.shutdown(wait=False, cancel_futures=True)


async def backend_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    backend = state.backend
    await backend.start()
    state.limits = request_limits(state.config, backend.info.max_model_len)
    yield
    await backend.shutdown()


async def chat_render_ctx(app: web.Application) -> AsyncIterator[None]:
    """The chat template render processes (they need the backend's tokenizer)."""
    from pe_engine.inputs.chat_render import ChatRenderPool, RenderLimits

    state = app[STATE]
    config = state.config
    limits = RenderLimits(
        timeout_s=config.chat_render_timeout,
        max_output_chars=max(2**16, MAX_CHARS_PER_TOKEN * state.backend.info.max_model_len),
    )
    state.chat_renderer = ChatRenderPool(
        state.backend.tokenizer, num_workers=config.chat_render_workers, limits=limits
    )
    # More threads than workers: a caller waits for a free worker within its budget, not here.
    state.render_threads = ThreadPoolExecutor(4 * config.chat_render_workers, "pe-render")
    yield
    state.chat_renderer.close()
    state.render_threads.shutdown(wait=False, cancel_futures=True)
