"""Encoding numpy arrays in every format, without torch; decoded back with pe_common's codec."""

from __future__ import annotations

import base64
import importlib.util
import sys

import numpy as np
import pytest

import pe_client
from pe_client.tensors import (
    RawTensor,
    as_json_payload,
    encode_embeds,
    encode_embeds_list,
    float_to_bfloat16_bits,
    is_tensor,
    is_torch_tensor,
)
from pe_common.codec import decode_prompt_embeds_numpy

HAS_TORCH = importlib.util.find_spec("torch") is not None


def embeds(rows: int = 3, hidden: int = 8, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, hidden)).astype(dtype)


def decode(payload: object, hidden: int = 8) -> np.ndarray:
    return decode_prompt_embeds_numpy(payload, hidden_size=hidden, dtype="float32")


def test_import_does_not_import_torch() -> None:
    assert pe_client.__name__ == "pe_client"
    if not HAS_TORCH:
        assert "torch" not in sys.modules


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("binary", [False, True])
def test_safetensors_round_trip(dtype: str, binary: bool) -> None:
    x = embeds(dtype=dtype)
    payload = encode_embeds(x, "safetensors", binary=binary)
    assert isinstance(payload, bytes if binary else str)
    np.testing.assert_array_equal(decode(payload), x.astype(np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("binary", [False, True])
def test_raw_round_trip(dtype: str, binary: bool) -> None:
    x = embeds(dtype=dtype)
    payload = encode_embeds(x, "raw", binary=binary)
    assert isinstance(payload, dict)
    assert payload["dtype"] == dtype
    assert payload["shape"] == [3, 8]
    assert isinstance(payload["data"], bytes if binary else str)
    np.testing.assert_array_equal(decode(payload), x.astype(np.float32))


def test_float64_is_sent_as_float32() -> None:
    x = embeds().astype(np.float64)
    payload = encode_embeds(x, "raw")
    assert isinstance(payload, dict) and payload["dtype"] == "float32"
    np.testing.assert_array_equal(decode(payload), x.astype(np.float32))


def test_non_contiguous_array_is_sent_by_value() -> None:
    x = embeds(rows=8, hidden=8)[::2].T  # a strided (8, 4) view
    np.testing.assert_array_equal(decode(encode_embeds(x, "safetensors"), hidden=4), x)


@pytest.mark.parametrize("dtype", ["int32", "int8", "bool", "complex64"])
def test_non_float_arrays_are_refused(dtype: str) -> None:
    with pytest.raises(TypeError, match="float32 or float16"):
        encode_embeds(np.zeros((2, 8), dtype=dtype))


def test_unknown_objects_and_formats_are_refused() -> None:
    with pytest.raises(TypeError, match="numpy array"):
        encode_embeds([[0.1, 0.2]])
    with pytest.raises(ValueError, match="embeds format"):
        encode_embeds(embeds(), "npy")  # type: ignore[arg-type]


@pytest.mark.skipif(HAS_TORCH, reason="checks the error raised when torch is absent")
def test_torch_format_without_torch_raises_a_clear_error() -> None:
    with pytest.raises(pe_client.MissingDependencyError, match=r"pe-client\[torch\]"):
        encode_embeds(embeds(), "torch")
    with pytest.raises(ImportError):
        encode_embeds(RawTensor.bfloat16(embeds()), "torch")


def test_bfloat16_rounding_matches_reference_bits() -> None:
    values = np.array([1.0, -2.5, 3.14159, 1e-3, np.inf, 65504.0, 1.00390625], dtype=np.float32)
    bits = float_to_bfloat16_bits(values)
    back = (bits.astype(np.uint32) << 16).view(np.float32)
    assert back[0] == 1.0 and back[1] == -2.5 and back[4] == np.inf
    assert abs(back[2] - 3.14159) < 0.02
    assert back[6] == 1.0  # a tie rounds to even
    assert np.isnan(
        (float_to_bfloat16_bits(np.array([np.nan], np.float32)).astype(np.uint32) << 16).view(
            np.float32
        )
    )[0]


@pytest.mark.parametrize("format", ["raw", "safetensors"])
def test_bfloat16_without_torch(format: str) -> None:
    x = embeds()
    raw = RawTensor.bfloat16(x)
    assert raw.dtype == "bfloat16" and raw.shape == (3, 8) and len(raw.data) == 48
    payload = encode_embeds(raw, format)  # type: ignore[arg-type]
    if format == "raw":
        assert isinstance(payload, dict) and payload["dtype"] == "bfloat16"
    np.testing.assert_allclose(decode(payload), x, rtol=1e-2, atol=1e-2)


def test_bfloat16_from_uint16_bit_patterns() -> None:
    bits = float_to_bfloat16_bits(embeds())
    assert RawTensor.bfloat16(bits) == RawTensor.bfloat16(embeds())


def test_raw_tensor_checks_itself() -> None:
    with pytest.raises(ValueError, match="dtype"):
        RawTensor(b"\0" * 8, "int8", (2, 4))
    with pytest.raises(ValueError, match="length"):
        RawTensor(b"\0" * 7, "float32", (2, 1))
    with pytest.raises(TypeError):
        RawTensor.bfloat16(np.zeros((2, 2), dtype=np.int32))


def test_encoded_payloads_pass_through() -> None:
    text = encode_embeds(embeds())
    assert encode_embeds(text) is text
    blob = encode_embeds(embeds(), binary=True)
    assert encode_embeds(bytearray(blob)) == blob  # type: ignore[arg-type]
    spec = encode_embeds(embeds(), "raw")
    assert encode_embeds(spec) == spec


def test_as_json_payload_base64s_bytes() -> None:
    blob = encode_embeds(embeds(), binary=True)
    assert isinstance(blob, bytes)
    assert base64.b64decode(as_json_payload(blob)) == blob  # type: ignore[arg-type]
    raw = as_json_payload(encode_embeds(embeds(), "raw", binary=True))
    assert isinstance(raw, dict) and isinstance(raw["data"], str)


def test_encode_list_of_prompts() -> None:
    out = encode_embeds_list([embeds(2), embeds(4)], "raw")
    assert isinstance(out, list) and [p["shape"][0] for p in out] == [2, 4]  # type: ignore[index]
    assert isinstance(encode_embeds_list(embeds()), str)
    with pytest.raises(ValueError, match="empty"):
        encode_embeds_list([])


def test_detection_does_not_need_torch() -> None:
    assert is_tensor(embeds()) and is_tensor(RawTensor.bfloat16(embeds()))
    assert not is_tensor([1.0]) and not is_tensor("abc")
    assert not is_torch_tensor(embeds())
