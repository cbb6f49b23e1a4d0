"""A minimal, bounded reader for zip archives of STORED (uncompressed) entries.

It returns memoryview slices of the archive, so tensor bytes are never copied here. Only
what torch.save writes is accepted: no compression, no encryption, no zip64 sizes, at most
``MAX_ZIP_ENTRIES`` entries. CRCs are not verified: the entries' contents are validated
structurally (pickle template, byte counts, finite values) instead.
"""

from __future__ import annotations

import struct

from pe_common.errors import PromptEmbedsError

MAX_ZIP_ENTRIES = 64
MAX_ZIP_COMMENT = 0xFFFF

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record, 22 bytes
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory file header, 46 bytes
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header, 30 bytes
_EOCD_SIG = b"PK\x05\x06"
_CENTRAL_SIG = b"PK\x01\x02"
_LOCAL_SIG = b"PK\x03\x04"
_ZIP64_MARK = 0xFFFFFFFF


def _bad_zip() -> PromptEmbedsError:
    return PromptEmbedsError(
        "`prompt_embeds` torch.save archive is malformed or truncated.",
        code="unsupported_format",
    )


def _compressed() -> PromptEmbedsError:
    return PromptEmbedsError(
        "`prompt_embeds` torch.save archive has compressed or encrypted entries; "
        "only stored (uncompressed) entries are accepted.",
        code="unsupported_format",
    )


def read_stored_zip(buf: memoryview) -> dict[str, memoryview]:
    """Map each entry name to its bytes (a slice of ``buf``)."""
    count, cd_offset, cd_end = _read_end_record(buf)
    entries: dict[str, memoryview] = {}
    pos = cd_offset
    for _ in range(count):
        name, data, pos = _read_central_entry(buf, pos, cd_end, cd_offset)
        if name in entries:
            raise _bad_zip()
        entries[name] = data
    return entries


def _read_end_record(buf: memoryview) -> tuple[int, int, int]:
    tail_start = max(0, len(buf) - _EOCD.size - MAX_ZIP_COMMENT)
    at = bytes(buf[tail_start:]).rfind(_EOCD_SIG)
    if at < 0:
        raise _bad_zip()
    at += tail_start
    if at + _EOCD.size > len(buf):
        raise _bad_zip()
    _, disk, cd_disk, count_disk, count, cd_size, cd_offset, comment_len = _EOCD.unpack_from(
        buf, at
    )
    if at + _EOCD.size + comment_len != len(buf) or disk != 0 or cd_disk != 0:
        raise _bad_zip()
    if count != count_disk or count > MAX_ZIP_ENTRIES:
        raise PromptEmbedsError(
            "`prompt_embeds` torch.save archive has too many entries.", code="unsupported_format"
        )
    if cd_offset + cd_size > at:
        raise _bad_zip()
    return count, cd_offset, cd_offset + cd_size


def _read_central_entry(
    buf: memoryview, pos: int, cd_end: int, data_end: int
) -> tuple[str, memoryview, int]:
    if pos + _CENTRAL.size > cd_end:
        raise _bad_zip()
    fields = _CENTRAL.unpack_from(buf, pos)
    sig, _, _, flags, method, _, _, _, packed, size, name_len, extra_len, comment_len = fields[:13]
    local_offset = fields[-1]
    if sig != _CENTRAL_SIG:
        raise _bad_zip()
    if method != 0 or flags & 1 or packed != size:
        raise _compressed()
    if size == _ZIP64_MARK or local_offset == _ZIP64_MARK:
        raise _bad_zip()
    name_start = pos + _CENTRAL.size
    next_pos = name_start + name_len + extra_len + comment_len
    if next_pos > cd_end:
        raise _bad_zip()
    raw_name = bytes(buf[name_start : name_start + name_len])
    data = _read_local_entry(buf, local_offset, raw_name, size, data_end)
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_zip() from None
    return name, data, next_pos


def _read_local_entry(
    buf: memoryview, offset: int, raw_name: bytes, size: int, data_end: int
) -> memoryview:
    if offset + _LOCAL.size > data_end:
        raise _bad_zip()
    sig, _, flags, method, _, _, _, _, _, name_len, extra_len = _LOCAL.unpack_from(buf, offset)
    if sig != _LOCAL_SIG:
        raise _bad_zip()
    if method != 0 or flags & 1:
        raise _compressed()
    name_start = offset + _LOCAL.size
    if bytes(buf[name_start : name_start + name_len]) != raw_name:
        raise _bad_zip()
    start = name_start + name_len + extra_len
    if start + size > data_end:
        raise _bad_zip()
    return buf[start : start + size]
