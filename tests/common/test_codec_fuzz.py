"""Property tests: mutated or random payloads decode to a valid tensor or raise
PromptEmbedsError, never another exception; the torch and numpy decoders agree."""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from archive_payloads import TINY_LIMITS, torch_save  # noqa: E402
from pe_common.codec import (  # noqa: E402
    PromptEmbedsError,
    decode_prompt_embeds,
    decode_prompt_embeds_numpy,
    encode_prompt_embeds,
)

H = 4
# PE_FUZZ_EXAMPLES raises the count for a deeper run (the default run stays fast)
EXAMPLES = int(os.environ.get("PE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def seeds() -> list[bytes]:
    base = torch.arange(24, dtype=torch.float32).reshape(6, H) / 7
    return [
        torch_save(base[:3]),
        torch_save(base.to(torch.bfloat16)[2:5]),
        torch_save(base.t().contiguous().t()),
        torch_save(base[None]),
    ]


SEEDS = seeds()


def decode_both(data: object) -> None:
    """Assert the outcome is a valid tensor or a PromptEmbedsError, the same for both paths."""
    try:
        out = decode_prompt_embeds(data, hidden_size=H, dtype=torch.float32, limits=TINY_LIMITS)
    except PromptEmbedsError as error:
        assert len(error.message) <= 300
        with pytest.raises(PromptEmbedsError) as info:
            decode_prompt_embeds_numpy(data, hidden_size=H, limits=TINY_LIMITS)
        assert info.value.code == error.code
        return
    assert out.dim() == 2 and out.shape[1] == H and out.shape[0] >= 1
    assert out.is_contiguous() and bool(torch.isfinite(out).all())
    as_np = decode_prompt_embeds_numpy(data, hidden_size=H, limits=TINY_LIMITS)
    assert (as_np == out.numpy()).all()


def mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for position, value in edits:
        buf[position % len(buf)] = value
    return bytes(buf if cut is None else buf[: cut % (len(buf) + 1)])


edits_st = st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=8)


@FUZZ
@given(st.sampled_from(SEEDS), edits_st, st.none() | st.integers(0, 2**16))
def test_mutated_torch_zip(seed: bytes, edits: list[tuple[int, int]], cut: int | None) -> None:
    decode_both(mutate(seed, edits, cut))


def with_pickle(seed: bytes, pickle_bytes: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(seed)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            data = pickle_bytes if name.endswith("data.pkl") else src.read(name)
            dst.writestr(name, data)
    return out.getvalue()


def pickle_of(seed: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(seed)) as archive:
        return archive.read("archive/data.pkl")


@FUZZ
@given(st.sampled_from(SEEDS), edits_st, st.none() | st.integers(0, 512))
def test_mutated_pickle_in_valid_zip(
    seed: bytes, edits: list[tuple[int, int]], cut: int | None
) -> None:
    decode_both(with_pickle(seed, mutate(pickle_of(seed), edits, cut)))


@FUZZ
@given(st.binary(max_size=512), st.sampled_from([b"", b"PK\x03\x04", b"\x10" + bytes(7) + b"{"]))
def test_random_bytes(data: bytes, prefix: bytes) -> None:
    decode_both(prefix + data)
    decode_both((prefix + data).decode("latin-1"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
entry_st = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I8"]) | json_values,
        "shape": st.lists(st.integers(-2, 6), max_size=4) | json_values,
        "data_offsets": st.lists(st.integers(-2, 200), min_size=2, max_size=2) | json_values,
    }
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["prompt_embeds", "__metadata__", "x"]), entry_st | json_values
    ),
    st.binary(max_size=128),
)
def test_random_safetensors_headers(header: dict[str, object], data: bytes) -> None:
    raw = json.dumps(header).encode()
    decode_both(struct.pack("<Q", len(raw)) + raw + data)


@FUZZ
@given(
    st.sampled_from(["float32", "float16", "bfloat16", "int8"]) | json_values,
    st.lists(st.integers(-1, 70), max_size=4) | json_values,
    st.binary(max_size=200) | st.text(max_size=300),
)
def test_random_raw_specs(dtype: object, shape: object, data: object) -> None:
    decode_both({"data": data, "dtype": dtype, "shape": shape})


@FUZZ
@given(
    st.sampled_from(["float32", "float16", "bfloat16"]),
    st.integers(1, 5),
    st.sampled_from(["safetensors", "torch", "raw"]),
    st.booleans(),
)
def test_valid_payloads_round_trip(dtype: str, rows: int, fmt: str, binary: bool) -> None:
    x = torch.randn(rows, H).to(getattr(torch, dtype))
    payload = encode_prompt_embeds(x, fmt, binary=binary)  # type: ignore[arg-type]
    out = decode_prompt_embeds(payload, hidden_size=H, dtype=torch.float32, limits=TINY_LIMITS)
    assert torch.equal(out, x.float())
