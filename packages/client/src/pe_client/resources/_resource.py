"""What every resource shares: its client, the one way a call is sent, the async shell's wrapper.

A resource family (``client.completions``, ...) is written once, generic in what its methods
return: the sync resource binds those types to the results, the async one to coroutines of them
(the async client's ``request`` is a coroutine function) and wraps each method with
:func:`coroutine_method` so that callers still see an ``async def``. A method that acts on the
answer does so through :func:`then`, which works on either.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from pe_client._base import BodyBuilder, RequestOptions
from pe_client.params import RequestExtras

if TYPE_CHECKING:
    from pe_client._base import BaseClient
    from pe_client.embeds_object import EmbedsObject

ResponseT = TypeVar("ResponseT")
StreamT = TypeVar("StreamT")
MethodT = TypeVar("MethodT", bound=Callable[..., Any])


@dataclass(frozen=True)
class Endpoint:
    """A route and the wire types it answers with (``chunk_type`` when it can stream)."""

    method: str
    path: str
    response_type: type[Any]
    chunk_type: type[Any] | None = None


class APIResource(Generic[ResponseT, StreamT]):
    """A group of API calls made through one client; a call returns ``ResponseT``, or
    ``StreamT`` when it streams."""

    def __init__(self, client: BaseClient[Any]) -> None:
        self._client = client

    def _call(
        self,
        endpoint: Endpoint,
        extras: RequestExtras,
        build_body: BodyBuilder | None = None,
        stream: bool = False,
        reuploadable: tuple[EmbedsObject, ...] = (),
    ) -> ResponseT | StreamT:
        options = RequestOptions(
            endpoint.method, endpoint.path, build_body, stream, **extras, reuploadable=reuploadable
        )
        if stream:
            assert endpoint.chunk_type is not None, f"{endpoint.path} does not stream"
            return cast(StreamT, self._client.request_stream(options, endpoint.chunk_type))
        return cast(ResponseT, self._client.request(options, endpoint.response_type))


def then(result: Any, after: Callable[[Any], Any]) -> Any:
    """``after`` applied to a call's answer: at once to the sync client's answer, when awaited
    to the async client's pending one (so one method body serves both)."""
    if inspect.isawaitable(result):
        return _awaited(result, after)
    return after(result)


async def _awaited(pending: Awaitable[Any], after: Callable[[Any], Any]) -> Any:
    return after(await pending)


def coroutine_method(method: MethodT) -> MethodT:
    """``method`` (which returns an awaitable) as a coroutine function.

    Callers see an ``async def``: ``inspect.iscoroutinefunction`` and ``create_autospec`` mocks
    work, and arguments are checked when the call is awaited, as in any coroutine.
    """

    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        return await method(*args, **kwargs)

    return cast(MethodT, call)
