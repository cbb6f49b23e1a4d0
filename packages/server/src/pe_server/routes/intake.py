"""The first steps every body-carrying route shares: read the body, decode it, check `model`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from aiohttp import web

from pe_server.body import read_body
from pe_server.errors import APIError
from pe_server.request_builder import PromptBuilder
from pe_server.state import BODY_KIND, BODY_LIMIT, STATE, ServerState

T = TypeVar("T")


class ModelRequest(Protocol):
    @property
    def model(self) -> str | None: ...


R = TypeVar("R", bound=ModelRequest)


@dataclass(frozen=True)
class Intake(Generic[R]):
    """A decoded request for a model this server serves, and the builder of its prompts."""

    state: ServerState
    req: R
    model: str  # the served name to report
    builder: PromptBuilder


async def take_in(request: web.Request, decode: Callable[..., R]) -> Intake[R]:
    """Decode the body, check its `model` and make the request's :class:`PromptBuilder`."""
    state = request.app[STATE]
    req = await decode_body(request, decode)
    model = check_model(state, req.model)
    return Intake(state, req, model, PromptBuilder(state, request))


async def decode_body(request: web.Request, decode: Callable[..., T]) -> T:
    """Read the body under its limit and deadline, then decode and check it (JSON or msgpack)."""
    state = request.app[STATE]
    body = await read_body(request, request[BODY_LIMIT], state.config.body_read_timeout)
    try:
        return decode(body, request[BODY_KIND], limits=state.limits)
    except (UnicodeDecodeError, RecursionError, OverflowError):
        # The decoders should report these themselves; a second line of defence.
        raise APIError.bad_request(
            "The request body could not be decoded.", code="invalid_json"
        ) from None


def check_model(state: ServerState, model: str | None) -> str:
    """The served name to report; 404 for a model this server does not serve."""
    if model is None or model == "":
        return state.model_name
    if model not in state.config.model_names:
        raise APIError.model_not_found(model)
    return model
