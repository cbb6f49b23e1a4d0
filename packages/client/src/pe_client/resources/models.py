"""``client.models``: the served models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pe_client._base import NOT_GIVEN, NotGiven, RequestOptions, TimeoutTypes
from pe_common.protocol import ModelList

if TYPE_CHECKING:
    from pe_client.client import AsyncPEClient, PEClient


def _list_request(
    extra_headers: Mapping[str, str] | None, timeout: TimeoutTypes | NotGiven
) -> RequestOptions:
    return RequestOptions(method="GET", path="models", extra_headers=extra_headers, timeout=timeout)


class Models:
    """``client.models``."""

    def __init__(self, client: PEClient) -> None:
        self._client = client

    def list(
        self,
        *,
        extra_headers: Mapping[str, str] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> ModelList:
        """``GET /models``: the served models (``.data`` holds one card each)."""
        return self._client.request(_list_request(extra_headers, timeout), ModelList)


class AsyncModels:
    """``client.models`` of :class:`~pe_client.AsyncPEClient`."""

    def __init__(self, client: AsyncPEClient) -> None:
        self._client = client

    async def list(
        self,
        *,
        extra_headers: Mapping[str, str] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> ModelList:
        """``GET /models``: the served models (``.data`` holds one card each)."""
        return await self._client.request(_list_request(extra_headers, timeout), ModelList)
