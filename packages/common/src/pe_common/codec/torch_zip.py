"""torch.save zip archives: locate the records, match the pickle, view the storage bytes."""

from __future__ import annotations

from pe_common.codec.limits import ITEMSIZE, EmbedsLimits
from pe_common.codec.tensor_view import TensorView
from pe_common.codec.torch_pickle import parse_tensor_pickle
from pe_common.codec.zip_reader import read_stored_zip
from pe_common.errors import PromptEmbedsError

ZIP_MAGIC = b"PK\x03\x04"
LEGACY_PICKLE_MAGIC = b"\x80\x02"


def _missing_record() -> PromptEmbedsError:
    return PromptEmbedsError(
        "`prompt_embeds` torch.save archive lacks its data.pkl or storage record.",
        code="unsupported_format",
    )


def parse_torch_zip(buf: memoryview, limits: EmbedsLimits) -> TensorView:
    """Return a view of the one tensor a torch.save archive holds (nothing is unpickled)."""
    entries = read_stored_zip(buf)
    prefix = _archive_prefix(entries)
    pickle_bytes = entries[f"{prefix}/data.pkl"]
    if len(pickle_bytes) > limits.max_pickle_bytes:
        raise PromptEmbedsError(
            "`prompt_embeds` torch.save data.pkl is larger than one tensor needs.",
            code="unsupported_format",
        )
    _check_byteorder(entries.get(f"{prefix}/byteorder"))
    tensor = parse_tensor_pickle(bytes(pickle_bytes))
    storage = tensor.storage
    record = entries.get(f"{prefix}/data/{storage.key}")
    if record is None:
        raise _missing_record()
    if len(record) != storage.numel * ITEMSIZE[storage.dtype]:
        raise PromptEmbedsError(
            "`prompt_embeds` torch.save storage record size does not match its element count.",
            code="size_mismatch",
        )
    return TensorView(record, storage.dtype, tensor.size, tensor.stride, tensor.offset)


def _archive_prefix(entries: dict[str, memoryview]) -> str:
    prefixes = [
        name[: -len("/data.pkl")]
        for name in entries
        if name.endswith("/data.pkl") and name.count("/") == 1
    ]
    if len(prefixes) != 1:
        raise _missing_record()
    return prefixes[0]


def _check_byteorder(record: memoryview | None) -> None:
    # torch.save writes "little" on little-endian hosts; archives without it predate the record.
    if record is not None and (len(record) != 6 or bytes(record) != b"little"):
        raise PromptEmbedsError(
            "`prompt_embeds` torch.save archive is not little-endian.", code="unsupported_format"
        )
