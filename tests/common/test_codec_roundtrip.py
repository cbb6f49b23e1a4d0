"""Round trips through every format, and what real vLLM clients send (base64 of torch.save)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile

import msgspec
import numpy as np
import pybase64
import pytest

torch = pytest.importorskip("torch")

from pe_common.codec import (  # noqa: E402
    SUPPORTED_DTYPES,
    EmbedsLimits,
    PromptEmbedsError,
    decode_prompt_embeds,
    decode_prompt_embeds_numpy,
    encode_prompt_embeds,
)
from pe_common.errors import InvalidRequestError, PEValidationError  # noqa: E402

H = 16
FORMATS = ("safetensors", "torch", "raw")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def vllm_tensor2base64(x: torch.Tensor) -> str:
    """vllm/utils/serial_utils.py::tensor2base64: torch.save as given, then base64."""
    buffer = io.BytesIO()
    torch.save(x, buffer)
    return pybase64.b64encode(buffer.getvalue()).decode("utf-8")


def sample(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(dtype)


def squeezed(x: torch.Tensor) -> torch.Tensor:
    return x.detach()[0] if x.dim() == 3 else x.detach()


def assert_owned(out: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype) -> None:
    assert out.shape == shape and out.dtype == dtype
    assert out.is_contiguous() and out.device.type == "cpu" and not out.requires_grad
    assert out.untyped_storage().nbytes() == out.nbytes  # its own storage, nothing more


# round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("src", SUPPORTED_DTYPES)
@pytest.mark.parametrize("shape", [(5, H), (1, 5, H)], ids=["2d", "3d"])
@pytest.mark.parametrize("binary", [False, True], ids=["base64", "binary"])
def test_torch_round_trip(fmt: str, src: str, shape: tuple[int, ...], binary: bool) -> None:
    x = sample(shape, TORCH_DTYPES[src])
    payload = encode_prompt_embeds(x, fmt, binary=binary)
    if fmt == "raw":
        assert isinstance(payload, dict) and payload["dtype"] == src
        assert isinstance(payload["data"], bytes if binary else str)
    else:
        assert isinstance(payload, bytes if binary else str)
    for target in TORCH_DTYPES.values():
        out = decode_prompt_embeds(payload, hidden_size=H, dtype=target)
        assert_owned(out, (5, H), target)
        assert torch.equal(out, squeezed(x).to(target))
    as_np = decode_prompt_embeds_numpy(payload, hidden_size=H)
    assert as_np.dtype == np.float32 and as_np.flags.c_contiguous and as_np.flags.owndata
    assert np.array_equal(as_np, squeezed(x).float().numpy())


@pytest.mark.parametrize("fmt", ["safetensors", "raw"])
@pytest.mark.parametrize("src", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(3, H), (1, 3, H)], ids=["2d", "3d"])
def test_numpy_round_trip(fmt: str, src: str, shape: tuple[int, ...]) -> None:
    x = np.random.default_rng(0).standard_normal(shape).astype(src)
    for binary in (False, True):
        payload = encode_prompt_embeds(x, fmt, binary=binary)
        out = decode_prompt_embeds_numpy(payload, hidden_size=H, dtype=src)
        assert out.dtype == np.dtype(src) and np.array_equal(out, x.reshape(3, H))
        as_torch = decode_prompt_embeds(payload, hidden_size=H, dtype=TORCH_DTYPES[src])
        assert np.array_equal(as_torch.numpy(), x.reshape(3, H))


def test_numpy_input_in_torch_format() -> None:
    x = np.random.default_rng(1).standard_normal((3, H)).astype(np.float16)
    payload = encode_prompt_embeds(x, "torch")
    expected = vllm_tensor2base64(torch.from_numpy(x))
    assert payload == expected
    assert np.array_equal(decode_prompt_embeds_numpy(payload, hidden_size=H, dtype="float16"), x)


def test_numpy_big_endian_and_strided_input() -> None:
    x = np.random.default_rng(2).standard_normal((H, 4)).astype(">f4").T  # big-endian view
    for fmt in FORMATS:
        out = decode_prompt_embeds_numpy(encode_prompt_embeds(x, fmt), hidden_size=H)
        assert np.array_equal(out, x.astype(np.float32))


@pytest.mark.parametrize("fmt", FORMATS)
def test_zero_rows_encode_and_are_refused_as_empty(fmt: str) -> None:
    # Found by the server fuzz test: numpy input with a zero dim used to raise TypeError.
    for x in (np.zeros((0, H), np.float32), torch.zeros(0, H)):
        with pytest.raises(PromptEmbedsError) as info:
            decode_prompt_embeds(encode_prompt_embeds(x, fmt), hidden_size=H, dtype=torch.float32)
        assert info.value.code == "empty_prompt"


def test_bfloat16_numpy_path_is_exact() -> None:
    x = sample((4, H), torch.bfloat16)
    out = decode_prompt_embeds_numpy(encode_prompt_embeds(x, "raw"), hidden_size=H)
    assert np.array_equal(out, x.float().numpy())
    half = decode_prompt_embeds_numpy(encode_prompt_embeds(x), hidden_size=H, dtype="float16")
    assert np.array_equal(half, x.float().numpy().astype(np.float16))


def test_encode_torch_format_is_vllm_tensor2base64() -> None:
    for dtype in TORCH_DTYPES.values():
        x = sample((3, H), dtype)
        assert encode_prompt_embeds(x, "torch") == vllm_tensor2base64(x)
        binary = encode_prompt_embeds(x, "torch", binary=True)
        assert isinstance(binary, bytes) and pybase64.b64encode(binary).decode() == (
            vllm_tensor2base64(x)
        )


def test_encode_sends_only_the_view_bytes() -> None:
    base = sample((100, H), torch.float32)
    view = base[10:13]
    for fmt in ("torch", "safetensors"):
        payload = encode_prompt_embeds(view, fmt, binary=True)
        assert isinstance(payload, bytes) and len(payload) < 3 * H * 4 + 2048
        assert torch.equal(decode_prompt_embeds(payload, hidden_size=H, dtype=torch.float32), view)


def test_encode_rejects_what_it_cannot_send() -> None:
    with pytest.raises(TypeError):
        encode_prompt_embeds(torch.ones(2, H, dtype=torch.float64))
    with pytest.raises(TypeError):
        encode_prompt_embeds(np.ones((2, H)))  # float64
    with pytest.raises(TypeError):
        encode_prompt_embeds([[1.0] * H])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        encode_prompt_embeds(torch.ones(2, H), "npy")  # type: ignore[arg-type]


def test_safetensors_interop_with_reference_library() -> None:
    safetensors_torch = pytest.importorskip("safetensors.torch")
    x = sample((3, H), torch.bfloat16)
    ours = encode_prompt_embeds(x, "safetensors", binary=True)
    assert isinstance(ours, bytes)
    assert torch.equal(safetensors_torch.load(ours)["prompt_embeds"], x)
    theirs = safetensors_torch.save({"prompt_embeds": x}, metadata={"source": "test"})
    assert torch.equal(decode_prompt_embeds(theirs, hidden_size=H, dtype=torch.bfloat16), x)


# what vLLM clients send ------------------------------------------------------------------


def vllm_like_inputs() -> dict[str, torch.Tensor]:
    base = sample((40, H), torch.float32)
    embedding = torch.nn.Embedding(50, H)
    return {
        "plain": base[:4].clone(),
        "requires_grad": base[:4].clone().requires_grad_(True),
        "embedding_output_with_grad_fn": embedding(torch.tensor([1, 2, 3])),
        "slice_with_offset": base[30:33],
        "storage_larger_than_view": base[:2],
        "transposed": sample((H, 6), torch.float32).t(),
        "column_slice": sample((5, 2 * H), torch.float32)[:, H:],
        "every_other_row": base[::2],
        "batched": base[None, 5:9],
        "bf16_view": base.to(torch.bfloat16)[7:9],
    }


@pytest.mark.parametrize("name", list(vllm_like_inputs()))
def test_vllm_tensor2base64_inputs_decode(name: str) -> None:
    x = vllm_like_inputs()[name]
    payload = vllm_tensor2base64(x)
    expected = squeezed(x)
    for target in (torch.float32, torch.bfloat16):
        out = decode_prompt_embeds(payload, hidden_size=H, dtype=target)
        assert_owned(out, tuple(expected.shape), target)
        assert torch.equal(out, expected.to(target))
    as_np = decode_prompt_embeds_numpy(payload, hidden_size=H)
    assert np.array_equal(as_np, expected.float().numpy())


def rewrite_location(payload: bytes, location: str) -> bytes:
    out = io.BytesIO()
    old = b"X\x03\x00\x00\x00cpu"
    new = b"X" + len(location).to_bytes(4, "little") + location.encode()
    with zipfile.ZipFile(io.BytesIO(payload)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("data.pkl"):
                assert data.count(old) == 1
                data = data.replace(old, new)
            dst.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize("location", ["cuda:0", "cuda:7", "mps", "xpu:1"])
def test_tensor_saved_on_another_device(location: str) -> None:
    x = sample((3, H), torch.float16)
    buffer = io.BytesIO()
    torch.save(x, buffer)
    payload = rewrite_location(buffer.getvalue(), location)
    if location.startswith("cuda"):  # torch itself reads it with map_location
        loaded = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
        assert torch.equal(loaded, x)
    encoded = pybase64.b64encode(payload).decode()
    assert torch.equal(decode_prompt_embeds(encoded, hidden_size=H, dtype=torch.float16), x)


def test_pickle_protocol_4() -> None:
    x = sample((3, H), torch.bfloat16)
    buffer = io.BytesIO()
    torch.save(x, buffer, pickle_protocol=4)
    out = decode_prompt_embeds(buffer.getvalue(), hidden_size=H, dtype=torch.bfloat16)
    assert torch.equal(out, x)


def test_decoded_tensor_does_not_alias_the_request() -> None:
    x = sample((3, H), torch.float32)
    for payload in (
        bytearray(encode_prompt_embeds(x, "torch", binary=True)),  # type: ignore[arg-type]
        bytearray(encode_prompt_embeds(x, "safetensors", binary=True)),  # type: ignore[arg-type]
    ):
        out = decode_prompt_embeds(payload, hidden_size=H, dtype=torch.float32)
        payload[:] = bytes(len(payload))
        assert torch.equal(out, x)
    raw = encode_prompt_embeds(x, "raw", binary=True)
    assert isinstance(raw, dict)
    raw["data"] = bytearray(raw["data"])  # type: ignore[arg-type]
    out = decode_prompt_embeds(raw, hidden_size=H, dtype=torch.float32)
    raw["data"][:] = bytes(len(raw["data"]))  # type: ignore[index,arg-type]
    assert torch.equal(out, x)


def test_memoryview_and_msgpack_transport() -> None:
    x = sample((3, H), torch.bfloat16)
    raw = encode_prompt_embeds(x, "raw", binary=True)
    body = msgspec.msgpack.decode(msgspec.msgpack.encode({"prompt_embeds": raw}))
    out = decode_prompt_embeds(body["prompt_embeds"], hidden_size=H, dtype=torch.bfloat16)
    assert torch.equal(out, x)
    st = encode_prompt_embeds(x, binary=True)
    assert isinstance(st, bytes)
    out = decode_prompt_embeds(memoryview(st), hidden_size=H, dtype=torch.bfloat16)
    assert torch.equal(out, x)


class RawStruct(msgspec.Struct):
    data: str | bytes
    dtype: str
    shape: list[int]


class RawText(msgspec.Struct):
    data: str
    dtype: str
    shape: list[int]


def test_raw_struct_like_the_wire_schema() -> None:
    x = sample((2, H), torch.float16)
    raw = encode_prompt_embeds(x, "raw")
    assert isinstance(raw, dict)
    spec = RawStruct(**raw)  # type: ignore[arg-type]
    assert torch.equal(decode_prompt_embeds(spec, hidden_size=H, dtype=torch.float16), x)
    decoded = msgspec.json.decode(json.dumps(raw), type=RawText)
    out = decode_prompt_embeds_numpy(decoded, hidden_size=H, dtype="float16")
    assert np.array_equal(out, x.numpy())


# errors and params -----------------------------------------------------------------------


def test_error_types_and_param() -> None:
    assert issubclass(PromptEmbedsError, PEValidationError)
    assert issubclass(InvalidRequestError, PEValidationError)
    assert issubclass(PEValidationError, ValueError)
    error = PromptEmbedsError("x" * 400, code="too_large")
    assert (
        error.param == "prompt_embeds" and len(error.message) == 300 and str(error) == error.message
    )
    assert InvalidRequestError("bad n", code="invalid_parameter", param="n").param == "n"
    with pytest.raises(PromptEmbedsError) as info:
        decode_prompt_embeds(
            "@@@@", hidden_size=H, dtype=torch.float32, param="messages[1].content[0]"
        )
    assert info.value.param == "messages[1].content[0]" and info.value.code == "invalid_base64"


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        EmbedsLimits(max_bytes=0)
    with pytest.raises(ValueError):
        EmbedsLimits(max_rows=True)
    with pytest.raises(ValueError):
        decode_prompt_embeds("", hidden_size=0, dtype=torch.float32)
    with pytest.raises(ValueError):
        decode_prompt_embeds("", hidden_size=H, dtype=torch.int64)
    with pytest.raises(ValueError):
        decode_prompt_embeds_numpy("", hidden_size=H, dtype="int8")


def test_numpy_path_never_imports_torch() -> None:
    script = f"""
import sys
sys.modules["torch"] = None  # any import of torch now fails
import numpy as np
from pe_common.codec import encode_prompt_embeds, decode_prompt_embeds_numpy
x = np.arange(6 * {H}, dtype=np.float16).reshape(6, {H})
for fmt in ("safetensors", "raw"):
    for binary in (False, True):
        out = decode_prompt_embeds_numpy(encode_prompt_embeds(x, fmt, binary=binary),
                                         hidden_size={H}, dtype="float16")
        assert np.array_equal(out, x)
torch_zip = {vllm_tensor2base64(torch.arange(2 * H, dtype=torch.float32).reshape(2, H))!r}
out = decode_prompt_embeds_numpy(torch_zip, hidden_size={H})
assert out.shape == (2, {H}) and out[1, 0] == {H}
try:
    encode_prompt_embeds(x, "torch")
except TypeError:
    pass
else:
    raise AssertionError("format='torch' without torch must raise TypeError")
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
