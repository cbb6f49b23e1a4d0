"""quantization="int8": int8 linears against their dequantized weights, and the engine with them
(the fixtures' tiny models keep their top logits far apart, so greedy tokens survive int8)."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pe_engine import LLM, SamplingParams
from pe_engine.config import EngineConfig
from pe_engine.models import int8_linear
from pe_engine.models.int8_linear import Int8Linear

PROMPTS = ["The capital of France is", "def fib(n):", "1, 2, 3, 4,"]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


def blocks_of(weight: torch.Tensor) -> torch.Tensor:
    return weight.view(weight.shape[0], -1, 32)


@pytest.mark.parametrize("rows", [1, 2, 3, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_linear_matches_its_dequantized_weight(rows: int, with_bias: bool) -> None:
    """Each block of 32 within half a step of its scale; up to KERNEL_ROWS rows the int8
    kernel (inputs quantized per 32), more: the dequantized product exactly."""
    gen = torch.Generator().manual_seed(rows)
    weight, x = torch.randn(96, 96, generator=gen), torch.randn(rows, 96, generator=gen)
    bias = torch.randn(96, generator=gen) if with_bias else None
    layer = Int8Linear(weight, bias)
    assert layer.weight.dtype == torch.int8 and layer.scale.shape == (96, 3)
    step = blocks_of(weight).abs().amax(dim=2, keepdim=True) / 127
    error = (blocks_of(layer.dequantized()) - blocks_of(weight)).abs()
    # half a step, plus the float16 scale's rounding (2**-11 relative) times up to 127 steps
    assert (error <= step * (0.5 + 127 * 2**-11) + 1e-6).all()
    exact = F.linear(x, layer.dequantized(), bias)
    if rows <= int8_linear.KERNEL_ROWS and int8_linear.int8_kernel() is not None:
        assert relative_error(layer(x), exact) < 0.01  # the inputs' int8 blocks
    else:
        torch.testing.assert_close(layer(x), exact)
    assert relative_error(layer(x), F.linear(x, weight, bias)) < 0.01
    assert layer(x.view(1, rows, 96)).shape == (1, rows, 96)
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_int8_linear_without_the_kernel_is_the_dequantized_product(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No kernel (PE_INT8_KERNEL=torch, or a CPU it does not build for), or an input width
    that is not whole blocks (a last block zero-padded): the dequantized product."""
    gen = torch.Generator().manual_seed(0)
    weight, x = torch.randn(32, 40, generator=gen), torch.randn(1, 40, generator=gen)
    layer = Int8Linear(weight)
    assert layer.scale.shape == (32, 2) and not layer.fits_kernel
    torch.testing.assert_close(layer(x), F.linear(x, layer.dequantized()))
    monkeypatch.setattr(int8_linear, "int8_kernel", lambda: None)
    layer = Int8Linear(weight[:, :32])
    torch.testing.assert_close(layer(x[:, :32]), F.linear(x[:, :32], layer.dequantized()))
    # a slice of output channels at a time: 32 x 40 weights, 7 channels a slice, with a bias
    monkeypatch.setattr(int8_linear, "DEQUANTIZED_SLICE", 7 * 40)
    bias = torch.randn(32, generator=gen)
    layer, rows = Int8Linear(weight, bias), torch.randn(5, 40, generator=gen)
    torch.testing.assert_close(layer(rows), F.linear(rows, layer.dequantized(), bias))


def test_weights_are_llama_cpp_q8_0_blocks_bit_for_bit() -> None:
    """The values and float16 scales llama.cpp's quantizer makes (gguf-py's copy of it), and a
    Q8_0 file's weights, dequantized as a GGUF loads, quantize back to the file's blocks."""
    gguf = pytest.importorskip("gguf")
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(64, 160, generator=gen) * torch.rand(64, 1, generator=gen) * 4
    weight[0, :32] = 0  # an all-zero block: scale 0
    weight[1, 5] = 2.5 * weight[1, :32].abs().max()  # an outlier
    kind = gguf.GGMLQuantizationType.Q8_0
    blocks = gguf.quants.quantize(weight.numpy(), kind).reshape(64, 5, 34)
    file_scales = torch.from_numpy(blocks[..., :2].copy().view(np.float16)[..., 0])
    file_values = torch.from_numpy(blocks[..., 2:].copy().view(np.int8).reshape(64, 160))
    for source in (weight, torch.from_numpy(gguf.quants.dequantize(blocks.reshape(64, -1), kind))):
        layer = Int8Linear(source)
        assert torch.equal(layer.weight, file_values)
        assert torch.equal(layer.scale.view(torch.int16), file_scales.view(torch.int16))
    torch.testing.assert_close(layer.dequantized(), source, rtol=0, atol=0)


@pytest.mark.skipif(int8_linear.int8_kernel() is None, reason="no int8 kernel here")
@pytest.mark.parametrize("rows", [1, 2])
def test_kernel_blocks_its_inputs_like_q8_0(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode rows take pe's int8 kernel: inputs quantized per 32, close to the exact product;
    the same layer without it computes the dequantized product."""
    gen = torch.Generator().manual_seed(7)
    weight, x = torch.randn(200, 576, generator=gen), torch.randn(rows, 576, generator=gen)
    layer = Int8Linear(weight, torch.randn(200, generator=gen))
    exact = F.linear(x, layer.dequantized(), layer.bias)
    got = layer(x)
    assert relative_error(got, exact) < 0.01
    calls: list[int] = []
    real = int8_linear.int8_kernel()
    monkeypatch.setattr(int8_linear, "int8_kernel", lambda: lambda *a: calls.append(1) or real(*a))
    layer(x)
    assert calls == [1]
    monkeypatch.setattr(int8_linear, "int8_kernel", lambda: None)  # PE_INT8_KERNEL=torch
    torch.testing.assert_close(layer(x), exact)


def run_kernel(fn: Any, layer: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    rows, in_features = x.shape
    y = torch.empty(rows, layer.out_features)
    xq = torch.empty(rows, in_features, dtype=torch.int8)
    xs = torch.empty(rows, in_features // 32)
    status = fn(
        x.data_ptr(), *layer.kernel_pointers, y.data_ptr(), rows, layer.out_features,
        in_features, xq.data_ptr(), xs.data_ptr(), 2,
    )  # fmt: skip
    assert status == 0
    return y


@pytest.mark.parametrize("in_features", [32, 544, 576])
@pytest.mark.parametrize("rows", [1, 3, 4, 6, 9])
def test_both_kernel_builds_agree_with_the_dequantized_product(
    in_features: int, rows: int, avx2_int8: ctypes.CDLL
) -> None:
    """The AVX512-VNNI and the AVX2 build (odd and even block counts): the same int8 sums, so
    results equal to float rounding, and within the inputs' quantization of the exact product.
    Rows multiplied together (four at a time, then the rest) equal each row on its own to the
    last bit: a sequence's numbers do not depend on what it is batched with."""
    native = int8_linear._build_int8_library()
    builds = [int8_linear.linear_function(lib) for lib in (native, avx2_int8) if lib is not None]
    gen = torch.Generator().manual_seed(in_features + rows)
    layer = Int8Linear(torch.randn(48, in_features, generator=gen), torch.randn(48, generator=gen))
    x = torch.randn(rows, in_features, generator=gen)
    exact = F.linear(x, layer.dequantized(), layer.bias)
    results = []
    for fn in builds:
        y = run_kernel(fn, layer, x)
        assert relative_error(y, exact) < 0.015
        one_by_one = torch.cat([run_kernel(fn, layer, x[i : i + 1]) for i in range(rows)])
        assert torch.equal(y, one_by_one)
        results.append(y)
    torch.testing.assert_close(results[0], results[-1], rtol=1e-5, atol=1e-5)


def test_kernel_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PE_INT8_KERNEL", "torch")
    int8_linear.int8_kernel.cache_clear()
    try:
        assert int8_linear.int8_kernel() is None
    finally:
        monkeypatch.delenv("PE_INT8_KERNEL")
        int8_linear.int8_kernel.cache_clear()


def int8_llm(model_dir: Path, **kwargs: object) -> LLM:
    return LLM(
        str(model_dir), device="cpu", max_model_len=128, num_kv_blocks=32, block_size=8,
        **kwargs,  # type: ignore[arg-type]
    )  # fmt: skip


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_llama_tied_dir", "tiny_qwen2_dir"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_int8_engine_stays_close_to_the_unquantized_model(
    fixture: str, dtype: str, request: pytest.FixtureRequest
) -> None:
    """Teacher-forced over 60 tokens: most top-1 tokens and the logprobs stay (random weights
    have no margins to spare; the demo model's figures are in RESULTS.md, "Int8 quality")."""
    model_dir = request.getfixturevalue(fixture)
    prompt = {"prompt_token_ids": list(range(100, 160))}
    params = SamplingParams(temperature=0.0, max_tokens=4, prompt_logprobs=1)
    (plain,) = int8_llm(model_dir, dtype=dtype).generate([prompt], params)
    quantized = int8_llm(model_dir, dtype=dtype, quantization="int8")
    model = quantized.engine.runner.model
    linears = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 4 * len(model.layers) + 1  # qkv, o, gate_up, down; the head
    (got,) = quantized.generate([prompt], params)
    assert len(got.outputs[0].token_ids) == 4
    diffs, agree = [], 0
    for want_pos, got_pos in zip(plain.prompt_logprobs[1:], got.prompt_logprobs[1:], strict=True):
        diffs += [
            abs(lp.logprob - got_pos[t].logprob) for t, lp in want_pos.items() if t in got_pos
        ]
        agree += top1(want_pos) == top1(got_pos)
    assert agree >= 0.9 * 59
    assert sum(diffs) / len(diffs) < 0.05


def top1(position: dict[int, Any]) -> int:
    return next(token for token, lp in position.items() if lp.rank == 1)


def test_unknown_quantization_is_refused_by_name(tiny_llama_dir: Path) -> None:
    with pytest.raises(ValueError, match="quantization 'fp8' is not supported by pe's engine"):
        EngineConfig(model=str(tiny_llama_dir), quantization="fp8")
