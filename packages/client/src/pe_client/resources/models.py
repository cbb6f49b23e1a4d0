"""``client.models``: the served models."""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from typing_extensions import Never

from pe_client._base import NOT_GIVEN, NotGiven, TimeoutTypes
from pe_client.params import RequestExtras
from pe_client.resources._resource import APIResource, Endpoint, coroutine_method
from pe_common.protocol import ModelList

MODELS = Endpoint("GET", "models", ModelList)

ModelListT = TypeVar("ModelListT")


class BaseModels(APIResource[ModelListT, Never]):
    """``client.models`` for either client, generic in what ``list`` returns."""

    def list(
        self,
        *,
        extra_headers: Mapping[str, str] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> ModelListT:
        """``GET /models``: the served models (``.data`` holds one card each)."""
        return self._call(MODELS, RequestExtras(extra_headers=extra_headers, timeout=timeout))


class Models(BaseModels[ModelList]):
    """``client.models``."""


class AsyncModels(BaseModels[Coroutine[Any, Any, ModelList]]):
    """``client.models`` of :class:`~pe_client.AsyncPEClient`."""

    list = coroutine_method(BaseModels.list)
