"""Prompt embeddings stored once and referenced by id (pe's ``/v1/embeds``, and the offline
``LLM``'s handles): bounded in bytes in total and per tenant, expiring a fixed time after their
last use, evicted least recently used first, never while a request holds them.

An object is immutable: its tensor is the validated, model-dtype copy made at upload, and every
request that names it reads those rows. Ids are 128 random bits (never a content hash, which
would tell one tenant what another uploaded). A tenant sees only its own objects: another
tenant's id is "not found", the same answer as an unknown one.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from pe_common.errors import InvalidRequestError
from pe_engine.core.row_keys import remember_row_keys, row_keys

ID_PREFIX = "emb_"


class EmbedsNotFoundError(KeyError):
    """No such object for this tenant (unknown, expired, deleted or another tenant's)."""

    def __init__(self, embeds_id: str) -> None:
        super().__init__(embeds_id)
        self.embeds_id = embeds_id


class EmbedsStoreFullError(RuntimeError):
    """The object does not fit: the bytes it needs are held by objects in use."""


class EmbedsTooLargeError(EmbedsStoreFullError):
    """The object is larger than the store, or than the tenant's quota: it can never fit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes, where the store allows {limit} bytes per object")
        self.size = size
        self.limit = limit


@dataclass(eq=False)
class StoredEmbeds:
    """One stored tensor ``[num_tokens, hidden_size]`` and its bookkeeping."""

    id: str
    tenant: str
    tensor: torch.Tensor
    digest: bytes  # SHA-256 of the rows' keys (see row_keys): the content's identity
    created_at: float
    last_used: float
    ttl: float
    pins: int = 0
    is_deleted: bool = False

    @property
    def num_tokens(self) -> int:
        return int(self.tensor.shape[0])

    @property
    def hidden_size(self) -> int:
        return int(self.tensor.shape[1])

    @property
    def dtype(self) -> str:
        return str(self.tensor.dtype).removeprefix("torch.")

    @property
    def nbytes(self) -> int:
        return int(self.tensor.nbytes)

    @property
    def expires_at(self) -> float:
        return self.last_used + self.ttl


@dataclass
class StoreStats:
    uploads: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0
    objects: int = 0
    bytes: int = 0


@dataclass
class EmbedsStore:
    """The objects of every tenant, in least-recently-used order. Thread-safe."""

    max_bytes: int = 1 << 30
    ttl: float = 3600.0
    max_bytes_per_tenant: int | None = None
    clock: Callable[[], float] = time.time
    stats: StoreStats = field(default_factory=StoreStats)

    def __post_init__(self) -> None:
        self._objects: OrderedDict[str, StoredEmbeds] = OrderedDict()  # LRU first
        self._tenant_bytes: dict[str, int] = {}
        self._lock = threading.Lock()

    # ---- objects ------------------------------------------------------------------------

    def put(self, tensor: torch.Tensor, tenant: str = "") -> StoredEmbeds:
        """Store a validated ``[N, H]`` tensor; evicts expired, then least recently used
        objects not in use, to make room. Raises :class:`EmbedsStoreFullError` when the bytes
        it needs are held by objects in use (or it is larger than the store or the quota)."""
        tensor = tensor.detach().contiguous()
        size = int(tensor.nbytes)
        limit = min(self.max_bytes, self.max_bytes_per_tenant or self.max_bytes)
        if size > limit:  # before any hashing or locking
            raise EmbedsTooLargeError(size, limit)
        keys = row_keys(tensor)  # the prefix cache's per-row digests, made once here
        digest = hashlib.sha256(keys).digest()
        now = self.clock()
        with self._lock:
            self._purge_expired(now)
            self._make_room(size, tenant)
            obj = StoredEmbeds(new_id(), tenant, tensor, digest, now, now, self.ttl)
            remember_row_keys(tensor, keys)
            self._objects[obj.id] = obj
            self._tenant_bytes[tenant] = self._tenant_bytes.get(tenant, 0) + size
            self.stats.uploads += 1
            self._count()
            return obj

    def get(self, embeds_id: str, tenant: str = "", *, pin: bool = False) -> StoredEmbeds:
        """The object, its last use refreshed (and pinned when ``pin``); raises
        :class:`EmbedsNotFoundError` for a missing, expired, deleted or foreign id."""
        now = self.clock()
        with self._lock:
            obj = self._objects.get(embeds_id)
            if not self._is_visible(obj, tenant, now):
                self.stats.misses += 1
                raise EmbedsNotFoundError(embeds_id)
            assert obj is not None
            obj.last_used = now
            self._objects.move_to_end(embeds_id)
            if pin:
                obj.pins += 1
            self.stats.hits += 1
            return obj

    def unpin(self, obj: StoredEmbeds) -> None:
        """A request that held ``obj`` finished; a deleted object goes once no one holds it."""
        with self._lock:
            obj.pins -= 1
            if obj.pins == 0 and obj.is_deleted:
                self._drop(obj)
                self._count()

    def delete(self, embeds_id: str, tenant: str = "") -> None:
        """Forget the object now (requests holding it finish with it)."""
        now = self.clock()
        with self._lock:
            obj = self._objects.get(embeds_id)
            if not self._is_visible(obj, tenant, now):
                raise EmbedsNotFoundError(embeds_id)  # an expired one too, as get says
            assert obj is not None
            obj.is_deleted = True
            if obj.pins == 0:
                self._drop(obj)
            self._count()

    def list(
        self, tenant: str = "", *, limit: int = 20, after: str | None = None
    ) -> tuple[list[StoredEmbeds], bool]:
        """The tenant's live objects, newest first, after the one with id ``after``; and
        whether more follow."""
        now = self.clock()
        with self._lock:
            mine = [o for o in self._objects.values() if self._is_visible(o, tenant, now)]
        mine.sort(key=lambda o: (o.created_at, o.id), reverse=True)
        if after is not None:
            ids = [o.id for o in mine]
            mine = mine[ids.index(after) + 1 :] if after in ids else []
        return mine[:limit], len(mine) > limit

    def __len__(self) -> int:
        return self.stats.objects

    @property
    def num_bytes(self) -> int:
        return self.stats.bytes

    # ---- room -----------------------------------------------------------------------------

    @staticmethod
    def _is_visible(obj: StoredEmbeds | None, tenant: str, now: float) -> bool:
        return (
            obj is not None and obj.tenant == tenant and not obj.is_deleted and obj.expires_at > now
        )

    def _make_room(self, size: int, tenant: str) -> None:
        """Evict least recently used objects not in use until ``size`` more bytes fit in the
        tenant's quota (its own objects only) and in the store. All or nothing: an upload that
        cannot fit costs no one their objects."""
        victims: dict[str, StoredEmbeds] = {}
        if self.max_bytes_per_tenant is not None:
            self._plan_room(size, self.max_bytes_per_tenant, tenant, victims)
        self._plan_room(size, self.max_bytes, None, victims)
        for obj in victims.values():
            self._drop(obj)
            self.stats.evictions += 1

    def _plan_room(
        self, size: int, budget: int, tenant: str | None, victims: dict[str, StoredEmbeds]
    ) -> None:
        """Add ``tenant``'s (or anyone's, for None) least recently used objects not in use to
        ``victims`` until ``size`` more bytes fit in ``budget`` (``put`` refused objects over
        it); raise when they cannot."""

        def counts(obj: StoredEmbeds) -> bool:
            return tenant is None or obj.tenant == tenant

        if tenant is None:
            used = sum(self._tenant_bytes.values())
        else:
            used = self._tenant_bytes.get(tenant, 0)
        used -= sum(o.nbytes for o in victims.values() if counts(o))
        for obj in self._objects.values():
            if used + size <= budget:
                return
            if obj.pins == 0 and counts(obj) and obj.id not in victims:
                victims[obj.id] = obj
                used -= obj.nbytes
        if used + size > budget:
            raise EmbedsStoreFullError(
                f"no room for {size} more bytes: the store's objects are in use"
            )

    def _purge_expired(self, now: float) -> None:
        for obj in list(self._objects.values()):
            if obj.expires_at <= now and obj.pins == 0:
                self._drop(obj)
                self.stats.expirations += 1

    def _drop(self, obj: StoredEmbeds) -> None:
        if self._objects.pop(obj.id, None) is not None:
            self._tenant_bytes[obj.tenant] -= obj.nbytes
            if not self._tenant_bytes[obj.tenant]:
                del self._tenant_bytes[obj.tenant]

    def _count(self) -> None:
        live = [o for o in self._objects.values() if not o.is_deleted]
        self.stats.objects = len(live)
        self.stats.bytes = sum(self._tenant_bytes.values())


def new_id() -> str:
    """``emb_`` and 128 random bits in base32 (26 characters, lower case)."""
    return ID_PREFIX + base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


# ---- handles (the offline ``LLM`` and ``AsyncEngine``) ---------------------------------------


def handle_id(value: Any) -> str | None:
    """The id a handle names (a :class:`StoredEmbeds`, or ``{"id": "emb_..."}``); None for a value
    that is no handle (a tensor, a base64 string)."""
    if isinstance(value, StoredEmbeds):
        return value.id
    if isinstance(value, Mapping) and "id" in value:
        embeds_id = value["id"]
        if not isinstance(embeds_id, str):
            raise InvalidRequestError(
                "A prompt embeds handle's `id` must be a string.",
                code="invalid_embeds_id",
                param="prompt_embeds",
            )
        return embeds_id
    return None


def embeds_not_found_error(embeds_id: str, param: str) -> InvalidRequestError:
    shown = embeds_id if len(embeds_id) <= 64 else embeds_id[:64] + "..."
    return InvalidRequestError(
        f"No prompt embeds object with id `{shown}` (unknown, expired or deleted).",
        code="embeds_not_found",
        param=param,
    )


@dataclass
class EmbedsLease:
    """The stored objects one offline request names, pinned from the moment its prompt is built
    until it finishes, as the server pins them. The prompt holds the tensor itself, so an evicted
    object would still be read correctly; the pin keeps the store's byte count honest: an object
    in use is not evicted to make room that its tensor still takes."""

    store: EmbedsStore
    tenant: str = ""
    objects: list[StoredEmbeds] = field(default_factory=list)

    def resolve(self, handle: Any, param: str = "prompt_embeds") -> StoredEmbeds:
        """The live object ``handle`` names, pinned; :class:`InvalidRequestError` (code
        ``embeds_not_found``, naming the id and ``param``) for a missing, expired, deleted or
        other store's one."""
        embeds_id = handle_id(handle)
        if embeds_id is None:
            raise TypeError(f"not a prompt embeds handle: {type(handle).__name__}")
        try:
            obj = self.store.get(embeds_id, self.tenant, pin=True)
        except EmbedsNotFoundError:
            raise embeds_not_found_error(embeds_id, param) from None
        self.objects.append(obj)
        return obj

    def resolve_prompt(self, prompt: Mapping[str, Any]) -> Mapping[str, Any]:
        """``prompt`` with a handle under ``prompt_embeds`` replaced by its pinned object (which
        :class:`~pe_engine.inputs.prompt_builder.PromptBuilder` takes as already checked)."""
        handle = prompt.get("prompt_embeds")
        if handle_id(handle) is None:
            return prompt
        return {**prompt, "prompt_embeds": self.resolve(handle)}

    def resolve_part(self, part: Mapping[str, Any], param: str) -> dict[str, Any] | None:
        """A ``prompt_embeds`` chat part that names a stored object (``"data": handle`` or pe's
        ``"id": "emb_..."``) as the decoded part the chat builder takes; None for any other part."""
        data = part.get("data")
        handle = part if data is None else data
        if handle_id(handle) is None:
            return None
        obj = self.resolve(handle, f"{param}.{'id' if data is None else 'data'}")
        return {"type": "prompt_embeds", "data": obj.tensor}

    def release(self) -> None:
        """Unpin every object resolved so far (idempotent)."""
        objects, self.objects = self.objects, []
        for obj in objects:
            self.store.unpin(obj)
