"""EmbedsObject on the client side: embeddings stored on the server, referenced by id.

Wherever a tensor is accepted, an EmbedsObject becomes a reference (``{"id": ...}``, or a chat
part ``{"type": "prompt_embeds", "id": ...}``) instead of the tensor's bytes.

With ``reupload=True`` the object keeps the tensor it was uploaded from, so that when a server
has lost the id (a restart, another replica) the client uploads it again, moves the object to
the new id in place and retries. Chat messages built earlier hold the id as a plain string, so
every id such an object has had maps back to it through a weak registry, and request bodies are
built with its current id: a conversation's history keeps working after a re-upload.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pe_common.protocol.embeds import EmbedsObject as WireEmbedsObject

if TYPE_CHECKING:
    from pe_client.tensors import EmbedsFormat

EMBEDS_NOT_FOUND = "embeds_not_found"


@dataclass(frozen=True)
class EmbedsSource:
    """The tensor (or encoded payload) an object was uploaded from, and how it was encoded."""

    embeds: object
    format: EmbedsFormat


class EmbedsObject(WireEmbedsObject, dict=True, weakref=True):
    """Stored prompt embeddings: the server's description plus, with ``reupload=True``, the
    tensor kept client-side (``dict``: room for that state; ``weakref``: the id registry)."""

    @property
    def source(self) -> EmbedsSource | None:
        """The kept tensor, or ``None`` when the object cannot be re-uploaded."""
        source: EmbedsSource | None = self.__dict__.get("_source")
        return source

    def keep_source(self, source: EmbedsSource) -> None:
        """Keep ``source`` for re-uploads and answer for this id in request bodies."""
        self.__dict__["_source"] = source
        _REUPLOADABLE[self.id] = self

    def replace_with(self, fresh: WireEmbedsObject) -> None:
        """Become ``fresh`` (a re-upload of the same tensor): new id and dates, in place."""
        for name in WireEmbedsObject.__struct_fields__:
            setattr(self, name, getattr(fresh, name))
        if self.source is not None:
            _REUPLOADABLE[self.id] = self


# Every id a reuploadable object has had -> that object; weak, so the registry never keeps a
# tensor alive that the caller has dropped.
_REUPLOADABLE: weakref.WeakValueDictionary[str, EmbedsObject] = weakref.WeakValueDictionary()


def current_id(embeds_id: str) -> str:
    """The id to send for ``embeds_id``: a reuploadable object's latest id, else itself."""
    obj = _REUPLOADABLE.get(embeds_id)
    return obj.id if obj is not None else embeds_id


def is_embeds_object(x: object) -> bool:
    """True for an EmbedsObject (the client's or the wire struct from ``retrieve`` / ``list``)."""
    return isinstance(x, WireEmbedsObject)


def is_reference(x: object) -> bool:
    """True for an EmbedsObject or an already-built reference item (a mapping with ``id``)."""
    return is_embeds_object(x) or (
        isinstance(x, Mapping) and isinstance(x.get("id"), str) and "data" not in x
    )


def reference_item(x: object) -> dict[str, Any]:
    """The wire item for a reference: ``{"id": ...}`` (other keys of a mapping kept), with the
    latest id of a re-uploaded object."""
    if isinstance(x, WireEmbedsObject):
        return {"id": x.id}
    assert isinstance(x, Mapping), "reference_item takes what is_reference accepts"
    return {**x, "id": current_id(x["id"])}


def reuploadable_in(items: Iterable[object]) -> tuple[EmbedsObject, ...]:
    """The reuploadable objects that ``items`` (embeds items or content parts) reference."""
    found: dict[int, EmbedsObject] = {}
    for item in items:
        obj = _reuploadable(item)
        if obj is not None:
            found[id(obj)] = obj
    return tuple(found.values())


def _reuploadable(item: object) -> EmbedsObject | None:
    if isinstance(item, EmbedsObject):
        return item if item.source is not None else None
    if isinstance(item, Mapping) and isinstance(item.get("id"), str):
        return _REUPLOADABLE.get(item["id"])
    return None
