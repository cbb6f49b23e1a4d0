"""EmbedsStore on a fake clock: TTL since last use, LRU eviction of unpinned objects, pins,
deletion under a pin, tenant isolation, per-tenant quotas, stats and id format.

Sizes are in float32 rows of 4 columns (16 bytes a row), so byte budgets read as row counts.
"""

from __future__ import annotations

import re

import pytest
import torch

from pe_engine.inputs.embeds_store import (
    EmbedsNotFoundError,
    EmbedsStore,
    EmbedsStoreFullError,
    StoredEmbeds,
)

ROW = 16  # bytes of one [1, 4] float32 row
ID_FORMAT = re.compile(r"^emb_[a-z2-7]{26}$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def rows(n: int, fill: float = 1.0) -> torch.Tensor:
    return torch.full((n, 4), fill)


def store_of(clock: FakeClock, num_rows: int = 100, **kwargs: object) -> EmbedsStore:
    return EmbedsStore(max_bytes=num_rows * ROW, ttl=10.0, clock=clock, **kwargs)  # type: ignore[arg-type]


def is_live(store: EmbedsStore, obj: StoredEmbeds, tenant: str = "") -> bool:
    try:
        store.get(obj.id, tenant)
    except EmbedsNotFoundError:
        return False
    return True


def live_ids(store: EmbedsStore, tenant: str = "") -> set[str]:
    return {o.id for o in store.list(tenant, limit=1000)[0]}


# ---- objects and ids ----------------------------------------------------------------------


def test_put_keeps_an_immutable_copy_with_its_metadata(clock: FakeClock) -> None:
    store = store_of(clock)
    obj = store.put(rows(3, 2.0))
    assert store.get(obj.id) is obj and torch.equal(obj.tensor, rows(3, 2.0))
    assert (obj.num_tokens, obj.hidden_size, obj.dtype, obj.nbytes) == (3, 4, "float32", 3 * ROW)
    assert obj.created_at == clock.now and obj.expires_at == clock.now + 10.0
    assert len(obj.digest) == 32


def test_ids_are_random_base32_and_distinct(clock: FakeClock) -> None:
    store = store_of(clock, num_rows=10_000)
    same = rows(1)
    ids = [store.put(same).id for _ in range(200)]
    assert all(ID_FORMAT.match(i) for i in ids), ids[:3]
    assert len(set(ids)) == len(ids)  # same content, new id each time: never a content hash


def test_unknown_id_is_not_found_and_counted(clock: FakeClock) -> None:
    store = store_of(clock)
    with pytest.raises(EmbedsNotFoundError) as info:
        store.get("emb_" + "a" * 26)
    assert info.value.embeds_id == "emb_" + "a" * 26
    with pytest.raises(EmbedsNotFoundError):
        store.delete("emb_nothing")
    assert store.stats.misses == 1  # get counts misses; delete does not


# ---- TTL ------------------------------------------------------------------------------------


def test_ttl_slides_with_each_use(clock: FakeClock) -> None:
    store = store_of(clock)
    obj = store.put(rows(1))
    for _ in range(5):  # 5 x 8 s = 40 s in all, never 10 s without a use
        clock.advance(8.0)
        assert store.get(obj.id) is obj
        assert obj.expires_at == clock.now + 10.0
    clock.advance(10.0)
    assert not is_live(store, obj)


def test_expired_is_invisible_then_purged_on_the_next_put(clock: FakeClock) -> None:
    store = store_of(clock)
    old = store.put(rows(2))
    clock.advance(6.0)
    fresh = store.put(rows(3))
    clock.advance(4.0)  # old: exactly 10 s since its last use
    assert not is_live(store, old)
    assert live_ids(store) == {fresh.id}
    with pytest.raises(EmbedsNotFoundError):
        store.delete(old.id)
    assert store.num_bytes == 5 * ROW  # still held until something purges it
    store.put(rows(1))
    assert store.stats.expirations == 1
    assert store.num_bytes == 4 * ROW and len(store) == 2


def test_a_pinned_expired_object_is_not_purged(clock: FakeClock) -> None:
    store = store_of(clock)
    obj = store.get(store.put(rows(2)).id, pin=True)
    clock.advance(60.0)
    store.put(rows(1))
    assert store.stats.expirations == 0 and store.num_bytes == 3 * ROW
    assert torch.equal(obj.tensor, rows(2))  # the request holding it still reads its rows
    store.unpin(obj)
    store.put(rows(1))
    assert store.stats.expirations == 1 and store.num_bytes == 2 * ROW


# ---- LRU eviction and pins -------------------------------------------------------------------


def test_lru_eviction_order_follows_last_use(clock: FakeClock) -> None:
    store = store_of(clock, num_rows=30)
    a, b, c = (store.put(rows(10, float(i))) for i in range(3))
    store.get(a.id)  # a is now the most recently used: b, c, a
    d = store.put(rows(10))
    assert live_ids(store) == {a.id, c.id, d.id} and not is_live(store, b)
    store.get(c.id)  # a, d, c
    e = store.put(rows(20))  # needs two: a then d
    assert live_ids(store) == {c.id, e.id}
    assert store.stats.evictions == 3
    assert store.num_bytes == 30 * ROW


def test_pinned_objects_are_never_evicted(clock: FakeClock) -> None:
    store = store_of(clock, num_rows=30)
    a, b = store.put(rows(10)), store.put(rows(10))
    held = store.get(a.id, pin=True)
    store.get(b.id)  # b more recent than a: LRU would pick a, but a is pinned
    c = store.put(rows(10))
    d = store.put(rows(10))  # evicts b, never a
    assert live_ids(store) == {a.id, c.id, d.id}
    store.get(c.id, pin=True)
    store.get(d.id, pin=True)
    with pytest.raises(EmbedsStoreFullError):
        store.put(rows(1))  # only pinned objects remain
    assert live_ids(store) == {a.id, c.id, d.id}
    store.unpin(held)
    e = store.put(rows(1))  # a is free to go now
    assert live_ids(store) == {c.id, d.id, e.id}


def test_an_object_larger_than_the_store_is_refused(clock: FakeClock) -> None:
    store = store_of(clock, num_rows=10)
    kept = store.put(rows(5))
    with pytest.raises(EmbedsStoreFullError):
        store.put(rows(11))
    assert live_ids(store) == {kept.id} and store.stats.evictions == 0


def test_a_refused_put_evicts_nothing(clock: FakeClock) -> None:
    store = store_of(clock, num_rows=30)
    a, b, c = store.put(rows(10)), store.put(rows(10)), store.put(rows(10))
    store.get(b.id, pin=True)
    store.get(c.id, pin=True)
    with pytest.raises(EmbedsStoreFullError):
        store.put(rows(20))  # a's 10 rows would not be enough: a must stay
    assert is_live(store, a) and store.stats.evictions == 0


def test_room_in_the_quota_but_not_in_the_store_evicts_nothing(clock: FakeClock) -> None:
    store = store_of(clock, num_rows=30, max_bytes_per_tenant=20 * ROW)
    mine = store.put(rows(10), "a")
    pinned = [store.get(store.put(rows(10), "b").id, "b", pin=True) for _ in range(2)]
    with pytest.raises(EmbedsStoreFullError):
        store.put(rows(20), "a")  # the quota would drop `mine`; the store still lacks 10 rows
    assert is_live(store, mine, "a") and store.stats.evictions == 0
    store.unpin(pinned[0])
    store.put(rows(20), "a")  # now both fit: mine and one of b's go
    assert not is_live(store, mine, "a") and store.stats.evictions == 2


# ---- delete ----------------------------------------------------------------------------------


def test_delete_frees_at_once_when_unpinned(clock: FakeClock) -> None:
    store = store_of(clock)
    obj = store.put(rows(4))
    store.delete(obj.id)
    assert not is_live(store, obj)
    assert store.num_bytes == 0 and len(store) == 0
    with pytest.raises(EmbedsNotFoundError):
        store.delete(obj.id)


def test_delete_while_pinned_hides_it_and_frees_on_the_last_unpin(clock: FakeClock) -> None:
    store = store_of(clock)
    obj = store.put(rows(4))
    first, second = store.get(obj.id, pin=True), store.get(obj.id, pin=True)
    store.delete(obj.id)
    assert not is_live(store, obj) and obj.id not in live_ids(store)
    with pytest.raises(EmbedsNotFoundError):
        store.delete(obj.id)
    assert len(store) == 0
    assert store.num_bytes == 4 * ROW  # the requests still read its rows
    store.unpin(first)
    assert store.num_bytes == 4 * ROW
    store.unpin(second)
    assert store.num_bytes == 0


# ---- tenants ---------------------------------------------------------------------------------


def test_tenants_see_only_their_own_objects(clock: FakeClock) -> None:
    store = store_of(clock)
    mine, theirs = store.put(rows(1), "a"), store.put(rows(1), "b")
    assert is_live(store, mine, "a") and not is_live(store, mine, "b")
    assert not is_live(store, theirs, "a") and not is_live(store, theirs, "")
    assert live_ids(store, "a") == {mine.id} and live_ids(store, "b") == {theirs.id}
    assert live_ids(store, "") == set()
    with pytest.raises(EmbedsNotFoundError):
        store.delete(mine.id, "b")
    assert is_live(store, mine, "a")  # a foreign delete changed nothing


def test_a_tenant_quota_evicts_the_tenants_own_lru_first(clock: FakeClock) -> None:
    store = store_of(clock, num_rows=100, max_bytes_per_tenant=20 * ROW)
    b_old = store.put(rows(10), "b")  # the least recently used of all
    a1, a2 = store.put(rows(10), "a"), store.put(rows(10), "a")
    store.get(a1.id, "a")  # a2 is a's least recently used now
    a3 = store.put(rows(10), "a")
    assert live_ids(store, "a") == {a1.id, a3.id} and not is_live(store, a2, "a")
    assert live_ids(store, "b") == {b_old.id}  # never another tenant's
    assert store.stats.evictions == 1


def test_a_tenant_at_quota_with_everything_pinned_is_refused(clock: FakeClock) -> None:
    store = store_of(clock, num_rows=100, max_bytes_per_tenant=20 * ROW)
    other = store.put(rows(10), "b")
    a1, a2 = store.put(rows(10), "a"), store.put(rows(10), "a")
    store.get(a1.id, "a", pin=True)
    store.get(a2.id, "a", pin=True)
    with pytest.raises(EmbedsStoreFullError):
        store.put(rows(1), "a")
    with pytest.raises(EmbedsStoreFullError):
        store.put(rows(21), "a")  # over the quota itself
    assert is_live(store, other, "b") and store.stats.evictions == 0
    assert store.put(rows(10), "b").tenant == "b"  # b still has room


# ---- list and stats -----------------------------------------------------------------------------


def test_list_is_newest_first_and_paginated(clock: FakeClock) -> None:
    store = store_of(clock)
    objs = []
    for _ in range(5):
        objs.append(store.put(rows(1)))
        clock.advance(1.0)
    newest_first = [o.id for o in reversed(objs)]
    page, has_more = store.list(limit=2)
    assert [o.id for o in page] == newest_first[:2] and has_more
    page, has_more = store.list(limit=2, after=page[-1].id)
    assert [o.id for o in page] == newest_first[2:4] and has_more
    page, has_more = store.list(limit=2, after=page[-1].id)
    assert [o.id for o in page] == newest_first[4:] and not has_more
    assert store.list(after="emb_unknown") == ([], False)


def test_stats_count_uploads_hits_misses_evictions_and_expirations(clock: FakeClock) -> None:
    store = store_of(clock, num_rows=20)
    a = store.put(rows(10))
    b = store.put(rows(10))
    store.get(a.id)
    store.get(a.id, pin=True)
    with pytest.raises(EmbedsNotFoundError):
        store.get("emb_missing")
    store.put(rows(10))  # evicts b (a is pinned)
    assert not is_live(store, b)  # a miss too
    store.unpin(a)
    clock.advance(11.0)
    store.put(rows(1))  # a and the third expired
    s = store.stats
    assert (s.uploads, s.hits, s.misses, s.evictions, s.expirations) == (4, 2, 2, 1, 2)
    assert (s.objects, s.bytes) == (1, ROW)
    assert (len(store), store.num_bytes) == (1, ROW)
