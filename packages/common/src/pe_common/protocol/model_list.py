"""``GET /v1/models``: the served model cards."""

from __future__ import annotations

from typing import Literal

import msgspec

from pe_common.protocol.common import ResponseStruct, unix_time


class ModelCard(ResponseStruct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int = msgspec.field(default_factory=unix_time)
    owned_by: str = "pe"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None


class ModelList(ResponseStruct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[ModelCard] = msgspec.field(default_factory=list)
