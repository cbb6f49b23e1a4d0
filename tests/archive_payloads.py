"""Builders of hostile torch.save payloads, shared by the codec tests (tests/common) and the
server's catalogue tests (tests/server). torch is imported only by the builder that needs it."""

from __future__ import annotations

import io
import zipfile

import pybase64

from pe_common.codec import EmbedsLimits

# The codec's limits lowered: each hostile case stays tiny, so a regression cannot take CI down.
TINY_LIMITS = EmbedsLimits(
    max_bytes=4096, max_rows=64, max_pickle_bytes=1024, max_header_bytes=1024
)


def torch_save(obj: object, **kwargs: object) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)  # type: ignore[arg-type]
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return pybase64.b64encode(data).decode()


def rezip(
    payload: bytes,
    *,
    replace: dict[str, bytes] | None = None,
    add: dict[str, bytes] | None = None,
    drop: tuple[str, ...] = (),
    compression: int = zipfile.ZIP_STORED,
) -> bytes:
    """Rewrite a torch.save archive; ``replace``/``drop`` match entry names by suffix."""
    replace = replace or {}
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(payload)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if any(name.endswith(suffix) for suffix in drop):
                continue
            data = next((v for k, v in replace.items() if name.endswith(k)), src.read(name))
            dst.writestr(name, data, compress_type=compression)
        for name, data in (add or {}).items():
            dst.writestr(name, data)
    return out.getvalue()
