"""The app's typed state and the per-route policy the middlewares enforce."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from aiohttp import web

from pe_common.protocol import RequestLimits
from pe_server.admission import Admission
from pe_server.auth import ApiKeyAuth
from pe_server.backends.base import Backend
from pe_server.config import ServerConfig
from pe_server.metrics import ServerMetrics
from pe_server.sse import EventStream

if TYPE_CHECKING:
    from pe_engine.inputs.chat_render import ChatRenderPool
    from pe_engine.inputs.embeds_store import EmbedsStore

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)


@dataclass(frozen=True)
class RoutePolicy:
    """What the middlewares do before a route's handler runs.

    Deny by default: a handler without a policy is protected by the API key, takes no body
    and is not admission-controlled.
    """

    is_public: bool = False  # reachable without an API key
    is_generation: bool = False  # large body limit, needs a healthy engine
    has_body: bool = False  # Content-Type / Content-Encoding / Content-Length checks
    is_admitted: bool = False  # takes an admission slot and a bytes reservation


DEFAULT_POLICY = RoutePolicy()


def route_policy(policy: RoutePolicy) -> Callable[[H], H]:
    def mark(handler: H) -> H:
        handler.pe_policy = policy  # type: ignore[attr-defined]
        return handler

    return mark


def policy_of(request: web.Request) -> RoutePolicy:
    handler = request.match_info.handler
    return getattr(handler, "pe_policy", DEFAULT_POLICY)


PUBLIC = route_policy(RoutePolicy(is_public=True))
GENERATION = route_policy(RoutePolicy(is_generation=True, has_body=True, is_admitted=True))
SMALL_BODY = route_policy(RoutePolicy(has_body=True, is_admitted=True))


@dataclass
class ServerState:
    """Everything the handlers share, created by the app factory."""

    config: ServerConfig
    backend: Backend
    metrics: ServerMetrics
    admission: Admission
    auth: ApiKeyAuth
    limits: RequestLimits = field(default_factory=RequestLimits)
    decode_pool: ThreadPoolExecutor | None = None
    # Chat templates render in these processes; callers wait on these threads.
    chat_renderer: ChatRenderPool | None = None
    render_threads: ThreadPoolExecutor | None = None
    # Uploaded prompt embeddings (/v1/embeds), per tenant.
    embeds_store: EmbedsStore = field(default_factory=lambda: _default_store())
    is_draining: bool = False
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def model_name(self) -> str:
        return self.config.model_names[0]


def _default_store() -> EmbedsStore:
    from pe_engine.inputs.embeds_store import EmbedsStore

    return EmbedsStore()


STATE = web.AppKey("pe_state", ServerState)

# Per-request values set by the middlewares (and the stream, once a handler opened one).
REQUEST_ID = web.RequestKey("pe_request_id", str)
BODY_LIMIT = web.RequestKey("pe_body_limit", int)
BODY_KIND = web.RequestKey("pe_body_kind", str)
STREAM = web.RequestKey("pe_stream", EventStream)
