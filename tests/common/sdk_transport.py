"""The official openai client with a function for its HTTP transport: what the SDK sends, and how
it reads pe's bodies, without a server."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import openai

# openai 3.x ships httpx2, older releases httpx: the module its default client is built on.
_http = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])


def sdk_client(handler: Callable[[Any], Any]) -> openai.OpenAI:
    """An openai client whose every request goes to ``handler`` (request -> response)."""
    return openai.OpenAI(
        api_key="k",
        base_url="http://pe.test/v1",
        http_client=openai.DefaultHttpxClient(transport=_http.MockTransport(handler)),
        max_retries=0,
    )


def http_response(status: int, body: bytes, content_type: str = "application/json") -> Any:
    return _http.Response(status, content=body, headers={"content-type": content_type})
