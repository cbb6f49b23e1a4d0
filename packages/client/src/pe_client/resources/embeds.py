"""``client.embeds`` (a pe extension): upload prompt embeddings once, reference them by id.

A multi-turn chat that carries a document as embeddings would otherwise send the tensor again
on every turn; an uploaded tensor is an :class:`~pe_client.EmbedsObject`, accepted wherever a
tensor is (``user("Read:", obj)``, ``completions.create(prompt_embeds=obj)``) and sent as its id.
"""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any, Generic, TypeVar, cast
from urllib.parse import quote, urlencode

from typing_extensions import Never

from pe_client._base import NOT_GIVEN, BodyBuilder, NotGiven, RequestOptions, TimeoutTypes
from pe_client.embeds_object import EmbedsObject, EmbedsSource, is_reference
from pe_client.params import RequestExtras
from pe_client.resources._resource import APIResource, Endpoint, coroutine_method, then
from pe_client.tensors import EmbedsFormat, check_format, encode_embeds
from pe_common.protocol.embeds import EmbedsDeleted, EmbedsList

EMBEDS = Endpoint("POST", "embeds", EmbedsObject)

ObjectT = TypeVar("ObjectT")
ListT = TypeVar("ListT")
DeletedT = TypeVar("DeletedT")


def upload_body(source: EmbedsSource) -> BodyBuilder:
    """The POST /embeds body: the same item a completions ``prompt_embeds`` list carries."""
    if is_reference(source.embeds):
        raise TypeError("embeds.create takes a tensor or an encoded payload, not a reference")

    def build(binary: bool) -> dict[str, object]:
        encoded = encode_embeds(source.embeds, source.format, binary=binary)
        return dict(encoded) if isinstance(encoded, dict) else {"data": encoded}

    return build


def reupload_options(obj: EmbedsObject, failed: RequestOptions) -> RequestOptions:
    """The upload that replaces ``obj`` on a server that lost it, sent with the failed
    request's headers and timeout (an API key passed per request names the same tenant)."""
    assert obj.source is not None, "only objects that kept their tensor are re-uploaded"
    return RequestOptions(
        "POST",
        EMBEDS.path,
        upload_body(obj.source),
        extra_headers=failed.extra_headers,
        timeout=failed.timeout,
    )


def _object_endpoint(method: str, embeds_id: str, response_type: type[Any]) -> Endpoint:
    if not isinstance(embeds_id, str) or not embeds_id:
        raise ValueError(f"an embeds id must be a non-empty str, got {embeds_id!r}")
    return Endpoint(method, f"embeds/{quote(embeds_id, safe='')}", response_type)


def _list_endpoint(limit: int | None, after: str | None) -> Endpoint:
    query = {key: value for key, value in (("limit", limit), ("after", after)) if value is not None}
    path = f"embeds?{urlencode(query)}" if query else "embeds"
    return Endpoint("GET", path, EmbedsList)


class BaseEmbeds(APIResource[Any, Never], Generic[ObjectT, ListT, DeletedT]):
    """``client.embeds`` for either client, generic in what its methods return."""

    def create(
        self,
        embeds: object,
        *,
        format: EmbedsFormat | None = None,
        reupload: bool = False,
        extra_headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, object] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> ObjectT:
        """``POST /embeds``: upload one ``(num_tokens, hidden_size)`` tensor, get its handle.

        Args:
            embeds: a numpy array, torch.Tensor, :class:`~pe_client.RawTensor` or an
                already-encoded payload, as for ``prompt_embeds``.
            format: the encoding (default: the client's ``embeds_format``).
            reupload: keep the tensor client-side; when a request referencing the object gets
                a 404 ``embeds_not_found`` (a restarted or different server), upload it again
                (the object's ``id`` changes in place) and retry that request once.
            extra_headers / extra_body / timeout: per-request additions and overrides.
        """
        source = EmbedsSource(embeds, check_format(format or self._client.embeds_format))
        extras = RequestExtras(extra_headers=extra_headers, extra_body=extra_body, timeout=timeout)
        answer = self._call(EMBEDS, extras, upload_body(source))

        def kept(obj: EmbedsObject) -> EmbedsObject:
            if reupload:
                obj.keep_source(source)
            return obj

        return cast(ObjectT, then(answer, kept))

    def retrieve(
        self,
        embeds_id: str,
        *,
        extra_headers: Mapping[str, str] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> ObjectT:
        """``GET /embeds/{id}``: a stored tensor's description (404 once expired or deleted)."""
        extras = RequestExtras(extra_headers=extra_headers, timeout=timeout)
        return cast(ObjectT, self._call(_object_endpoint("GET", embeds_id, EmbedsObject), extras))

    def list(
        self,
        *,
        limit: int | None = None,
        after: str | None = None,
        extra_headers: Mapping[str, str] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> ListT:
        """``GET /embeds``: this API key's stored tensors, newest first; pass the answer's
        ``last_id`` as ``after`` for the next page while ``has_more``."""
        extras = RequestExtras(extra_headers=extra_headers, timeout=timeout)
        return cast(ListT, self._call(_list_endpoint(limit, after), extras))

    def delete(
        self,
        embeds_id: str,
        *,
        extra_headers: Mapping[str, str] | None = None,
        timeout: TimeoutTypes | NotGiven = NOT_GIVEN,
    ) -> DeletedT:
        """``DELETE /embeds/{id}``: free the stored tensor now rather than at its expiry."""
        extras = RequestExtras(extra_headers=extra_headers, timeout=timeout)
        endpoint = _object_endpoint("DELETE", embeds_id, EmbedsDeleted)
        return cast(DeletedT, self._call(endpoint, extras))


class Embeds(BaseEmbeds[EmbedsObject, EmbedsList, EmbedsDeleted]):
    """``client.embeds``."""


class AsyncEmbeds(
    BaseEmbeds[
        Coroutine[Any, Any, EmbedsObject],
        Coroutine[Any, Any, EmbedsList],
        Coroutine[Any, Any, EmbedsDeleted],
    ]
):
    """``client.embeds`` of :class:`~pe_client.AsyncPEClient`."""

    create = coroutine_method(BaseEmbeds.create)
    retrieve = coroutine_method(BaseEmbeds.retrieve)
    list = coroutine_method(BaseEmbeds.list)
    delete = coroutine_method(BaseEmbeds.delete)
