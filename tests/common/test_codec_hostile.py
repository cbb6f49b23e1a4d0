"""Hostile input catalogue (reference/security.md §11, rows 18-43) against the codec.

Every payload is tiny and the limits are lowered, so a regression cannot take CI down. Each
case must raise PromptEmbedsError with the expected code, quickly, with a short fixed
message, and without executing or allocating anything beyond the limits.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import time
import warnings
import zipfile
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from archive_payloads import TINY_LIMITS, b64, rezip, torch_save  # noqa: E402
from pe_common.codec import (  # noqa: E402
    EmbedsLimits,
    PromptEmbedsError,
    decode_prompt_embeds,
    decode_prompt_embeds_numpy,
    encode_prompt_embeds,
)

H = 8
MAX_SECONDS = 0.5


# payload builders -------------------------------------------------------------------------


def p_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    if -(2**31) <= value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def p_str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def p_tuple(items: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(p_int(item) for item in items) + b"t"


def template_pickle(
    *,
    numel: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    offset: int = 0,
    storage: str = "FloatStorage",
    key: str = "0",
    location: str = "cpu",
    requires_grad: bool = False,
) -> bytes:
    """The data.pkl torch.save writes for one tensor, built opcode by opcode."""
    return (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(("
        + p_str("storage")
        + f"ctorch\n{storage}\n".encode()
        + p_str(key)
        + p_str(location)
        + p_int(numel)
        + b"tQ"
        + p_int(offset)
        + p_tuple(size)
        + p_tuple(stride)
        + (b"\x88" if requires_grad else b"\x89")
        + b"ccollections\nOrderedDict\n)RtR."
    )


def hand_built_zip(pickle_bytes: bytes, storage: bytes, *, byteorder: bytes = b"little") -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", byteorder)
        archive.writestr("archive/data/0", storage)
        archive.writestr("archive/version", b"3\n")
    return out.getvalue()


def safetensors_file(header: object, data: bytes, *, header_len: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    length = len(raw) if header_len is None else header_len
    return struct.pack("<Q", length) + raw + data


def st_entry(dtype: str = "F32", shape: list[int] | None = None, end: int = 4 * 2 * H) -> dict:
    return {"dtype": dtype, "shape": shape or [2, H], "data_offsets": [0, end]}


def expect_error(
    data: object, code: str, *, limits: EmbedsLimits = TINY_LIMITS, dtype=None
) -> None:
    """Both decoders reject ``data`` with ``code`` in well under MAX_SECONDS."""
    start = time.perf_counter()
    with pytest.raises(PromptEmbedsError) as info:
        decode_prompt_embeds(data, hidden_size=H, dtype=dtype or torch.float32, limits=limits)
    elapsed = time.perf_counter() - start
    assert info.value.code == code, info.value.message
    assert info.value.param == "prompt_embeds"
    assert len(info.value.message) <= 300
    assert elapsed < MAX_SECONDS
    if dtype is None:
        with pytest.raises(PromptEmbedsError) as info_np:
            decode_prompt_embeds_numpy(data, hidden_size=H, limits=limits)
        assert info_np.value.code == code


def ok_tensor(rows: int = 2) -> torch.Tensor:
    return torch.arange(rows * H, dtype=torch.float32).reshape(rows, H) / 10


# row 18: invalid base64 ------------------------------------------------------------------


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s[:-1],  # bad padding / length
        lambda s: s[:-2] if s.endswith("=") else s[:-1],  # missing padding
        lambda s: s[:8] + " " + s[8:],  # whitespace
        lambda s: s[:8] + "\n" + s[8:],
        lambda s: s + "\n",
        lambda s: s[:4] + "@" + s[5:],  # bad character
        lambda s: "é" + s[1:],  # non-ASCII
        lambda s: s[:4] + "=" + s[5:],  # padding in the middle
    ],
)
def test_invalid_base64(mutate) -> None:
    text = encode_prompt_embeds(ok_tensor(), "safetensors")
    assert isinstance(text, str)
    expect_error(mutate(text), "invalid_base64")


def test_url_safe_alphabet_rejected() -> None:
    data = bytes(range(256))[-48:] * 2  # encodes with '+' and '/'
    text = b64(data)
    assert "+" in text or "/" in text
    urlsafe = text.replace("+", "-").replace("/", "_")
    expect_error(urlsafe, "invalid_base64")
    raw = {"data": urlsafe, "dtype": "float32", "shape": [3, H]}
    expect_error(raw, "invalid_base64")


def test_raw_invalid_base64_with_right_length() -> None:
    raw = {"data": "@" * 88, "dtype": "float32", "shape": [2, H]}  # 64 bytes -> 88 chars
    expect_error(raw, "invalid_base64")


# rows 19-21: raw sizes and shapes --------------------------------------------------------


def test_raw_base64_length_checked_before_decoding() -> None:
    # invalid characters too, so only a pre-decode length check can answer size_mismatch
    expect_error({"data": "@" * 84, "dtype": "float32", "shape": [2, H]}, "size_mismatch")
    expect_error({"data": "A" * 92, "dtype": "float32", "shape": [2, H]}, "size_mismatch")


def test_raw_decoded_length_mismatch() -> None:
    expect_error({"data": bytes(60), "dtype": "float32", "shape": [2, H]}, "size_mismatch")
    expect_error({"data": bytes(68), "dtype": "float32", "shape": [2, H]}, "size_mismatch")
    # right base64 length (4 * ceil(62 / 3) == 84) but padding decodes 63 bytes, not 62
    spec = {"data": b64(bytes(63)), "dtype": "float16", "shape": [31, 1]}
    start = time.perf_counter()
    with pytest.raises(PromptEmbedsError) as info:
        decode_prompt_embeds(spec, hidden_size=1, dtype=torch.float16, limits=TINY_LIMITS)
    assert info.value.code == "size_mismatch" and time.perf_counter() - start < MAX_SECONDS


@pytest.mark.parametrize(
    "shape",
    [
        [-1, H],
        [2, -H],
        [2, 2**62],
        [2**62, H],
        [2.0, H],
        ["2", H],
        [True, H],
        [2, None],
        "2x8",
        None,
        [],
        [1] * 9,
        [2, 0],
    ],
)
def test_raw_bad_shape(shape) -> None:
    expect_error({"data": "", "dtype": "float32", "shape": shape}, "invalid_shape")


def test_raw_zero_rows_is_empty_prompt() -> None:
    expect_error({"data": "", "dtype": "float32", "shape": [0, H]}, "empty_prompt")
    expect_error({"data": b"", "dtype": "bfloat16", "shape": [1, 0, H]}, "empty_prompt")


def test_raw_too_large_before_decoding() -> None:
    # more rows than max_rows, then more bytes than max_bytes; "A" is never decoded
    expect_error({"data": "A", "dtype": "float32", "shape": [65, H]}, "too_large")
    big = EmbedsLimits(max_bytes=256, max_rows=1000)
    expect_error({"data": "A", "dtype": "float32", "shape": [16, H]}, "too_large", limits=big)


def test_raw_missing_or_bad_fields() -> None:
    expect_error({"dtype": "float32", "shape": [2, H]}, "unsupported_format")
    expect_error({"data": [1.0, 2.0], "dtype": "float32", "shape": [2, H]}, "unsupported_format")
    expect_error({"data": "", "shape": [2, H]}, "unsupported_dtype")


# row 22: dtypes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype", ["int64", "bool", "uint8", "complex64", "float64", "float8_e4m3fn", "fp16", "F16", 3]
)
def test_raw_unsupported_dtype(dtype) -> None:
    expect_error({"data": bytes(64), "dtype": dtype, "shape": [2, H]}, "unsupported_dtype")


@pytest.mark.parametrize(
    "dtype", [torch.int64, torch.int32, torch.bool, torch.uint8, torch.complex64]
)
def test_torch_save_not_floating_point(dtype) -> None:
    tensor = torch.ones(2, H).to(dtype)
    expect_error(b64(torch_save(tensor)), "unsupported_dtype")
    with pytest.raises(PromptEmbedsError) as info:
        decode_prompt_embeds(b64(torch_save(tensor)), hidden_size=H, dtype=torch.bfloat16)
    assert info.value.message == (  # vLLM's words
        f"`prompt_embeds` dtype {dtype} is not a floating-point type, cannot safely cast to "
        "the model's dtype torch.bfloat16."
    )


def test_torch_save_float8_is_refused() -> None:
    tensor = torch.ones(2, H).to(torch.float8_e4m3fn)
    expect_error(b64(torch_save(tensor)), "unsupported_dtype")


@pytest.mark.parametrize("code", ["F64", "I64", "BOOL", "F8_E4M3", "C64", "U8", "f32", "x"])
def test_safetensors_unsupported_dtype(code) -> None:
    data = bytes(8 * 2 * H)
    expect_error(safetensors_file({"prompt_embeds": st_entry(code)}, data), "unsupported_dtype")


# rows 23-25, 27-28: shapes, width, values (all three formats) -----------------------------


def all_formats(tensor: torch.Tensor) -> list[object]:
    return [
        b64(torch_save(tensor)),
        torch_save(tensor),
        encode_prompt_embeds(tensor, "safetensors"),
        encode_prompt_embeds(tensor, "raw"),
        encode_prompt_embeds(tensor, "raw", binary=True),
    ]


@pytest.mark.parametrize(
    "shape", [(), (H,), (2, 2, H), (1, 1, 2, H), (2, H, 1), (1, 1, H, 1)], ids=str
)
def test_bad_rank(shape) -> None:
    tensor = torch.ones(shape)
    for payload in all_formats(tensor):
        expect_error(payload, "invalid_shape")


def test_zero_rows() -> None:
    for payload in all_formats(torch.ones(0, H)) + all_formats(torch.ones(1, 0, H)):
        expect_error(payload, "empty_prompt")


def test_wrong_width() -> None:
    for payload in all_formats(torch.ones(2, H + 1)) + all_formats(torch.ones(1, 2, H // 2)):
        expect_error(payload, "hidden_size_mismatch")
    with pytest.raises(PromptEmbedsError) as info:
        decode_prompt_embeds(
            encode_prompt_embeds(torch.ones(2, 1024)), hidden_size=4096, dtype=torch.float16
        )
    assert info.value.message == (
        "`prompt_embeds` hidden_size 1024 does not match the model's hidden_size 4096."
    )


def test_rank_message_matches_vllm() -> None:
    with pytest.raises(PromptEmbedsError) as info:
        decode_prompt_embeds(
            encode_prompt_embeds(torch.ones(2, 3, H)), hidden_size=H, dtype=torch.float32
        )
    assert info.value.message == (
        "`prompt_embeds` must be a 2D tensor of shape (num_tokens, hidden_size); "
        "got shape (2, 3, 8)."
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_non_finite_values(value, dtype) -> None:
    tensor = ok_tensor().to(dtype)
    tensor[1, 3] = value
    for payload in all_formats(tensor):
        expect_error(payload, "non_finite_values")
        expect_error(payload, "non_finite_values", dtype=dtype)


def test_overflow_after_cast() -> None:
    tensor = ok_tensor()
    tensor[0, 0] = 3e38
    for payload in all_formats(tensor):
        expect_error(payload, "non_finite_values", dtype=torch.float16)
        out = decode_prompt_embeds(payload, hidden_size=H, dtype=torch.bfloat16, limits=TINY_LIMITS)
        assert torch.isfinite(out).all()
    with pytest.raises(PromptEmbedsError) as info:
        decode_prompt_embeds_numpy(all_formats(tensor)[2], hidden_size=H, dtype="float16")
    assert info.value.code == "non_finite_values"


def test_large_finite_sum_is_not_a_false_positive() -> None:
    # every value finite but their sum overflows float16: the exact check must accept it
    tensor = torch.full((4, H), 60000.0, dtype=torch.float16)
    out = decode_prompt_embeds(encode_prompt_embeds(tensor), hidden_size=H, dtype=torch.float16)
    assert torch.equal(out, tensor)


# too_large -----------------------------------------------------------------------------


def test_too_large() -> None:
    tensor = torch.ones(64, H)  # 2 KiB fp32
    small = EmbedsLimits(
        max_bytes=1024, max_rows=1000, max_pickle_bytes=1024, max_header_bytes=1024
    )
    for payload in all_formats(tensor):
        expect_error(payload, "too_large", limits=small)
    expect_error(b64(torch_save(torch.ones(65, H))), "too_large")  # rows > max_rows
    # the cast target counts too: 512 fp16 bytes become 1 KiB of float32
    fp16 = EmbedsLimits(max_bytes=600)
    payload = encode_prompt_embeds(torch.ones(32, H, dtype=torch.float16))
    expect_error(payload, "too_large", limits=fp16)
    assert decode_prompt_embeds(payload, hidden_size=H, dtype=torch.float16, limits=fp16).shape == (
        32,
        H,
    )


def test_oversized_text_and_bytes_rejected_before_decoding() -> None:
    limits = EmbedsLimits(max_bytes=16, max_pickle_bytes=16, max_header_bytes=16)
    expect_error("@" * (limits.max_base64_chars + 4), "too_large", limits=limits)
    expect_error(b"PK\x03\x04" + bytes(limits.max_payload_bytes), "too_large", limits=limits)


def test_view_materialised_size_is_bounded() -> None:
    # 64 rows of storage, the view is all of it transposed: 2 KiB > 1 KiB
    tensor = torch.ones(H, 64).t()
    small = EmbedsLimits(max_bytes=1024)
    expect_error(b64(torch_save(tensor)), "too_large", limits=small)


# row 30: safetensors ---------------------------------------------------------------------


def test_safetensors_two_tensors() -> None:
    header = {
        "prompt_embeds": st_entry(),
        "other": {"dtype": "F32", "shape": [0], "data_offsets": [64, 64]},
    }
    expect_error(safetensors_file(header, bytes(64)), "invalid_safetensors")


def test_safetensors_wrong_name_or_entry() -> None:
    expect_error(safetensors_file({"embeds": st_entry()}, bytes(64)), "invalid_safetensors")
    expect_error(safetensors_file({}, b""), "invalid_safetensors")
    entry = st_entry() | {"extra": 1}
    expect_error(safetensors_file({"prompt_embeds": entry}, bytes(64)), "invalid_safetensors")
    expect_error(safetensors_file({"prompt_embeds": [1, 2]}, bytes(64)), "invalid_safetensors")


def test_safetensors_header_bombs() -> None:
    # length field claims 100 MB (or 2**63) on a tiny payload
    for claimed in (100 * 2**20, 2**63, 1025):
        expect_error(
            safetensors_file({"prompt_embeds": st_entry()}, bytes(64), header_len=claimed),
            "invalid_safetensors",
        )
    metadata = {"__metadata__": {f"k{i}": "v" for i in range(2000)}, "prompt_embeds": st_entry()}
    roomy = EmbedsLimits(max_header_bytes=1 << 16)
    expect_error(safetensors_file(metadata, bytes(64)), "invalid_safetensors", limits=roomy)
    expect_error(safetensors_file(metadata, bytes(64)), "invalid_safetensors")  # header > 1 KiB
    nested = {"__metadata__": {"a": {"b": "c"}}, "prompt_embeds": st_entry()}
    expect_error(safetensors_file(nested, bytes(64)), "invalid_safetensors")
    deep = b"{" + b'"a":[' * 400 + b"]" * 400 + b"}"
    expect_error(
        safetensors_file(deep, b"", header_len=len(deep)), "invalid_safetensors", limits=roomy
    )


def test_safetensors_malformed_header() -> None:
    for header in (
        b"{not json",
        b'{"a":NaN}',
        b"{\xff\xfe}",
        b'{"prompt_embeds":1,"prompt_embeds":2}',
        b"{",
    ):
        expect_error(safetensors_file(header, bytes(64)), "invalid_safetensors")


def test_safetensors_offsets_and_sizes() -> None:
    data = bytes(64)
    cases = [
        st_entry(end=60),  # does not cover the buffer
        {"dtype": "F32", "shape": [2, H], "data_offsets": [4, 64]},
        {"dtype": "F32", "shape": [2, H], "data_offsets": [0, 64, 1]},
        {"dtype": "F32", "shape": [2, H], "data_offsets": [0, "64"]},
        {"dtype": "F32", "shape": [3, H], "data_offsets": [0, 64]},  # shape vs bytes
        {"dtype": "F32", "shape": [2, True], "data_offsets": [0, 64]},
        {"dtype": "F32", "shape": "2,8", "data_offsets": [0, 64]},
    ]
    for entry in cases:
        expect_error(safetensors_file({"prompt_embeds": entry}, data), "invalid_safetensors")
    trailing = safetensors_file({"prompt_embeds": st_entry()}, data + b"x")
    expect_error(trailing, "invalid_safetensors")
    expect_error(safetensors_file({"prompt_embeds": st_entry()}, data[:-1]), "invalid_safetensors")
    for shape in ([-2, -H], [2**62, 2**62], [2, 2**31]):
        entry = {"dtype": "F32", "shape": shape, "data_offsets": [0, 64]}
        expect_error(safetensors_file({"prompt_embeds": entry}, data), "invalid_shape")


# row 31: code execution ------------------------------------------------------------------


class _Reduce:
    def __init__(self, func, args) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def test_os_system_reduce_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Reduce(os.system, (f"touch {marker}",)), protocol=2)
    zipped = hand_built_zip(evil, bytes(64))
    expect_error(b64(zipped), "unsupported_format")
    expect_error(b64(evil), "unsupported_format")  # bare pickle (legacy-looking)
    # the same call hidden as the template's backward-hooks argument
    hooks = template_pickle(numel=16, size=(2, H), stride=(H, 1)).replace(
        b"ccollections\nOrderedDict\n)R", b"cos\nsystem\n(" + p_str(f"touch {marker}") + b"tR"
    )
    expect_error(b64(hand_built_zip(hooks, bytes(64))), "unsupported_format")
    assert not marker.exists()


@pytest.mark.parametrize(
    "pickled",
    [
        b"\x80\x02c__builtin__\nbytearray\nJ\x00\x00\x00\x80\x85R.",  # bytearray(2 GiB)
        b"\x80\x02cbuiltins\nbytearray\nJ\x00\x00\x00\x80\x85R.",
        b"\x80\x02ctorch\nFloatTensor\nJ\x90\xd0\x03\x00M\x00\x10\x86R.",  # FloatTensor(250000, 4096)
        b"\x80\x02ctorch\nTensor\n)\x81.",  # NEWOBJ
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R.",
        b"\x80\x02ccollections\nOrderedDict\n)R.",
    ],
)
def test_constructor_bombs_rejected(pickled: bytes) -> None:
    expect_error(b64(hand_built_zip(pickled, bytes(64))), "unsupported_format")


# row 32: not a tensor --------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj",
    [{"prompt_embeds": torch.ones(2, H)}, [torch.ones(2, H)], 3, "text", None, (torch.ones(2, H),)],
    ids=["dict", "list", "int", "str", "none", "tuple"],
)
def test_torch_save_not_a_tensor(obj) -> None:
    expect_error(b64(torch_save(obj)), "unsupported_format")
    with pytest.raises(PromptEmbedsError) as info:
        decode_prompt_embeds(b64(torch_save(obj)), hidden_size=H, dtype=torch.float32)
    assert info.value.message == "`prompt_embeds` payload did not deserialize to a torch.Tensor."


# rows 33-35: sparse and stride-0 / overlapping views --------------------------------------


def test_sparse_tensors() -> None:
    """Sparse payloads are densified only after every index and the size are checked
    (tests/common/test_codec_sparse.py has the full set)."""
    bad = torch.sparse_coo_tensor(
        torch.tensor([[10], [10]]), torch.tensor([1.0]), (3, H), check_invariants=False
    )
    far = torch.sparse_coo_tensor(
        torch.tensor([[2**40], [0]]), torch.tensor([1.0]), (3, H), check_invariants=False
    )
    for tensor in (bad, far):
        expect_error(b64(torch_save(tensor)), "invalid_sparse")
    huge = torch.sparse_coo_tensor(
        torch.tensor([[0], [0]]), torch.tensor([1.0]), (20000, 20000), check_invariants=True
    )
    expect_error(b64(torch_save(huge)), "too_large")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse BSR support is in beta"
        bsr = torch.ones(2, H).to_sparse_bsr((1, 2))
    expect_error(b64(torch_save(bsr)), "unsupported_layout")


def test_stride_zero_and_overlapping_views() -> None:
    expect_error(b64(torch_save(torch.ones(1, H).expand(64, H))), "unsupported_layout")
    expect_error(
        b64(torch_save(torch.ones(2 * H).as_strided((4, H), (1, 1)))), "unsupported_layout"
    )
    expect_error(
        b64(torch_save(torch.ones(2 * H).as_strided((2, H), (H // 2, 1)))), "unsupported_layout"
    )
    # hand-built: 4-float storage viewed as [16, H] with stride (0, 0), and [1e9, H]
    for rows in (16, 10**9):
        pkl = template_pickle(numel=4, size=(rows, H), stride=(0, 0))
        code = "unsupported_layout" if rows == 16 else "too_large"
        expect_error(b64(hand_built_zip(pkl, bytes(16))), code)
    pkl = template_pickle(numel=16, size=(2, H), stride=(0, 1))
    expect_error(b64(hand_built_zip(pkl, bytes(64))), "unsupported_layout")


def test_views_outside_their_storage() -> None:
    cases = [
        dict(numel=16, size=(2, H), stride=(H, 1), offset=1),  # one past the end
        dict(numel=16, size=(2, H), stride=(H, 1), offset=10**6),
        dict(numel=16, size=(2, H), stride=(H + 1, 1)),
        dict(numel=16, size=(2, H), stride=(-H, 1)),
        dict(numel=16, size=(2, H), stride=(H, 1), offset=-1),
        dict(numel=16, size=(2, H), stride=(2**70, 1)),
    ]
    for case in cases:
        expect_error(b64(hand_built_zip(template_pickle(**case), bytes(64))), "unsupported_layout")
    negative_size = template_pickle(numel=16, size=(-2, H), stride=(H, 1))
    expect_error(b64(hand_built_zip(negative_size, bytes(64))), "invalid_shape")


def test_storage_record_size_mismatch() -> None:
    for numel in (15, 17, 2**40):
        pkl = template_pickle(numel=numel, size=(2, H), stride=(H, 1))
        expect_error(b64(hand_built_zip(pkl, bytes(64))), "size_mismatch")


# row 37: tensor kinds --------------------------------------------------------------------


def test_tensor_kinds() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both constructors warn that they are deprecated/beta
        quantized = torch.quantize_per_tensor(torch.ones(2, H), 0.1, 0, torch.qint8)
        nested = torch.nested.nested_tensor([torch.ones(2, H), torch.ones(1, H)])
    kinds = [
        quantized,
        nested,
        torch.empty(2, H, device="meta"),
        torch.nn.Parameter(torch.ones(2, H)),
    ]
    for tensor in kinds:
        expect_error(b64(torch_save(tensor)), "unsupported_tensor_kind")


# row 38: compressed entries --------------------------------------------------------------


def test_deflate_compressed_entries() -> None:
    payload = torch_save(torch.zeros(64, H))
    expect_error(b64(rezip(payload, compression=zipfile.ZIP_DEFLATED)), "unsupported_format")
    # only data.pkl compressed (a 5.6 KB flood inflating to MBs in the study)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(payload)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            kind = zipfile.ZIP_DEFLATED if name.endswith("data.pkl") else zipfile.ZIP_STORED
            dst.writestr(name, src.read(name), compress_type=kind)
    expect_error(b64(out.getvalue()), "unsupported_format")


# row 39: oversized data.pkl and opcode floods --------------------------------------------


def test_pickle_size_cap() -> None:
    payload = b64(torch_save(ok_tensor()))
    expect_error(payload, "unsupported_format", limits=EmbedsLimits(max_pickle_bytes=64))
    roomy = EmbedsLimits(max_pickle_bytes=10 * 2**20)
    for flood in (b"\x80\x02" + b"\x8f" * 200_000 + b".", b"\x80\x02" + b"(" * 100_000 + b"."):
        zipped = hand_built_zip(flood, bytes(64))
        expect_error(b64(zipped), "unsupported_format", limits=EmbedsLimits())  # over the cap
        expect_error(b64(zipped), "unsupported_format", limits=roomy)  # walked, still linear


@pytest.mark.parametrize(
    "flood",
    [
        b"\x80\x02" + b"\x8f" * 900 + b".",  # EMPTY_SET
        b"\x80\x02" + b"(" * 1000 + b".",  # MARK
        b"\x80\x02" + b"]" * 500 + b".",  # EMPTY_LIST
        b"\x80\x02" + b"K\x01" * 400 + b".",  # ints, never a tensor
        b"\x80\x02" + b"(" * 400 + b"t" * 400 + b".",  # nested tuples
        b"\x80\x02" + b"K\x01q\x00" + b"h\x00" * 300 + b".",  # memo reuse
        b"\x80\x02N.",
        b"\x80\x02.",
        b".",
    ],
)
def test_opcode_floods_and_wrong_streams(flood: bytes) -> None:
    expect_error(b64(hand_built_zip(flood, bytes(64))), "unsupported_format")


def test_template_deviations() -> None:
    base = template_pickle(numel=16, size=(2, H), stride=(H, 1))
    cases = [
        base[:-1],  # no STOP
        base + b"N",  # trailing bytes after STOP
        base.replace(b"X\x07\x00\x00\x00storage", p_str("storagf")),
        base.replace(b"ccollections\nOrderedDict\n)R", b"ccollections\nOrderedDict\n(K\x01tR"),
        base.replace(b"\x89ccollections", b"K\x00ccollections"),  # requires_grad not a bool
        base.replace(p_str("0"), p_str("../0")),  # key not alphanumeric
        base.replace(b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch._utils\n_rebuild_tensor\n"),
        b"\x80\x06" + base[2:],  # unknown protocol
    ]
    for pkl in cases:
        expect_error(b64(hand_built_zip(pkl, bytes(64))), "unsupported_format")
    second = b"(" + p_str("storage") + b"ctorch\nFloatStorage\n" + p_str("1") + p_str("cpu")
    two_storages = base.replace(b"tQ", b"tQ" + second + p_int(16) + b"tQ\x86", 1)
    expect_error(b64(hand_built_zip(two_storages, bytes(64))), "unsupported_format")


def test_missing_records() -> None:
    payload = torch_save(ok_tensor())
    expect_error(b64(rezip(payload, drop=("data/0",))), "unsupported_format")
    expect_error(b64(rezip(payload, drop=("data.pkl",))), "unsupported_format")
    expect_error(b64(rezip(payload, add={"other/data.pkl": b"x"})), "unsupported_format")
    many = {f"archive/extra{i}": b"" for i in range(70)}
    expect_error(b64(rezip(payload, add=many)), "unsupported_format")


# rows 40-42: legacy, byte order, garbage ---------------------------------------------------


def test_legacy_format() -> None:
    legacy = torch_save(ok_tensor(), _use_new_zipfile_serialization=False)
    assert legacy[:2] == b"\x80\x02"
    expect_error(b64(legacy), "unsupported_format")
    expect_error(legacy, "unsupported_format")


def test_big_endian_byteorder() -> None:
    payload = torch_save(ok_tensor())
    for order in (b"big", b"", b"little\n", b"LITTLE"):
        expect_error(b64(rezip(payload, replace={"byteorder": order})), "unsupported_format")
    no_record = rezip(payload, drop=("byteorder",))  # older archives: little-endian implied
    out = decode_prompt_embeds(b64(no_record), hidden_size=H, dtype=torch.float32)
    assert torch.equal(out, ok_tensor())


def test_truncated_empty_random() -> None:
    payload = torch_save(ok_tensor())
    for cut in (1, 4, 30, 200, len(payload) // 2, len(payload) - 1):
        expect_error(b64(payload[:cut]), "unsupported_format")
        expect_error(payload[:cut], "unsupported_format")
    expect_error("", "unsupported_format")
    expect_error(b"", "unsupported_format")
    expect_error(bytes(range(7, 250)) * 8, "unsupported_format")
    expect_error(b"PK\x03\x04" + bytes(range(256)) * 4, "unsupported_format")
    expect_error(b64(b"\x00" * 64), "unsupported_format")
    expect_error(12345, "unsupported_format")
    expect_error([[1.0] * H], "unsupported_format")


def test_messages_never_echo_payload_bytes(tmp_path: Path) -> None:
    marker = "SECRET_MARKER_xyz"
    evil = pickle.dumps(_Reduce(os.system, (marker,)), protocol=2)
    payloads = [
        b64(hand_built_zip(evil, bytes(64))),
        safetensors_file({marker: st_entry()}, bytes(64)),
        safetensors_file({"prompt_embeds": st_entry(marker)}, bytes(64)),
        {"data": marker, "dtype": "float32", "shape": [2, H]},
        {"data": "", "dtype": marker, "shape": [2, H]},
        marker,
    ]
    for payload in payloads:
        with pytest.raises(PromptEmbedsError) as info:
            decode_prompt_embeds(payload, hidden_size=H, dtype=torch.float32)
        assert marker not in info.value.message and "system" not in info.value.message
        assert info.value.__cause__ is None


def test_hand_built_template_matches_torch() -> None:
    """The builder above writes what torch reads, so its deviations test the real template."""
    values = torch.arange(4 * H, dtype=torch.float32)
    storage = values.numpy().tobytes()
    cases = [
        dict(numel=4 * H, size=(4, H), stride=(H, 1)),
        dict(numel=4 * H, size=(2, H), stride=(H, 1), offset=2 * H, requires_grad=True),
        dict(numel=4 * H, size=(H, 4), stride=(1, H), location="cuda:7"),
        dict(numel=4 * H, size=(1, 2, H), stride=(4 * H, 2 * H, 1)),
    ]
    for case in cases:
        zipped = hand_built_zip(template_pickle(**case), storage)
        expected = torch.load(io.BytesIO(zipped), weights_only=True, map_location="cpu")
        out = decode_prompt_embeds(b64(zipped), hidden_size=expected.shape[-1], dtype=torch.float32)
        assert torch.equal(out, expected.detach().squeeze(0))
