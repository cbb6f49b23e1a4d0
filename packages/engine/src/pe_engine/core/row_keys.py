"""Prefix-cache keys of prompt-embeds rows: a 16-byte digest per row, chained into the block
hashes (never the rows themselves). A stored object's keys are made once, at upload, and
remembered for as long as its tensor lives, so every later prompt built from it reaches the
prefix cache without hashing its rows again; any other rows are hashed when a block needs them.
"""

from __future__ import annotations

import hashlib
import threading
import weakref

import torch

ROW_KEY_BYTES = 16
_known_row_keys: dict[int, tuple[weakref.ref[torch.Tensor], bytes]] = {}
_known_lock = threading.Lock()


def row_keys(rows: torch.Tensor) -> bytes:
    """A 16-byte BLAKE2b digest of each row's bytes, concatenated: what the prefix cache hashes
    for embeds rows (block digests chain these, never the rows themselves)."""
    data = rows.contiguous().view(torch.uint8).numpy()
    return b"".join(hashlib.blake2b(row, digest_size=ROW_KEY_BYTES).digest() for row in data)


def remember_row_keys(tensor: torch.Tensor, keys: bytes) -> None:
    """Keep ``tensor``'s row keys while it lives, so prompts built from it (a stored object's
    tensor, reused every turn) reach the prefix cache without hashing its rows again."""
    key = id(tensor)

    def forget(_: object, key: int = key) -> None:
        with _known_lock:
            _known_row_keys.pop(key, None)

    with _known_lock:
        _known_row_keys[key] = (weakref.ref(tensor, forget), keys)


def known_row_keys(tensor: torch.Tensor) -> bytes | None:
    with _known_lock:
        entry = _known_row_keys.get(id(tensor))
    if entry is None or entry[0]() is not tensor:
        return None
    return entry[1]


def prompt_row_keys(parts: list[torch.Tensor]) -> bytes | None:
    """The row keys of a prompt's embeds rows built from ``parts`` (in order), when any part's
    are known (the others are hashed now); None when none are (the block manager hashes the
    rows when it needs them, as it always did)."""
    known = [known_row_keys(part) for part in parts]
    if all(keys is None for keys in known):
        return None
    return b"".join(k if k is not None else row_keys(p) for k, p in zip(known, parts, strict=True))
