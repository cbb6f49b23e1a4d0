"""quantization="int8": int8 linears against their dequantized weights, and the engine with them
(the fixtures' tiny models keep their top logits far apart, so greedy tokens survive int8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


@pytest.mark.parametrize("rows", [1, 2, 3, 64])
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_linear_matches_its_dequantized_weight(rows: int, with_bias: bool) -> None:
    """Up to KERNEL_ROWS rows: the int8 kernel (bfloat16 activations); more: float32 exactly."""
    gen = torch.Generator().manual_seed(rows)
    weight, x = torch.randn(96, 80, generator=gen), torch.randn(rows, 80, generator=gen)
    bias = torch.randn(96, generator=gen) if with_bias else None
    layer = Int8Linear(weight, bias)
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert ((layer.dequantized() - weight).abs() <= step / 2 + 1e-6).all()
    exact = F.linear(x, layer.dequantized(), bias)
    if rows <= int8_linear.KERNEL_ROWS:
        assert relative_error(layer(x), exact) < 0.01  # bfloat16 rounding of the inputs
    else:
        torch.testing.assert_close(layer(x), exact)
    assert relative_error(layer(x), F.linear(x, weight, bias)) < 0.01
    assert layer(x.view(1, rows, 80)).shape == (1, rows, 96)
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_int8_linear_without_the_kernel_is_the_dequantized_product(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(int8_linear, "int8_kernel_works", lambda: False)
    gen = torch.Generator().manual_seed(0)
    weight, x = torch.randn(32, 16, generator=gen), torch.randn(1, 16, generator=gen)
    layer = Int8Linear(weight)
    torch.testing.assert_close(layer(x), F.linear(x, layer.dequantized()))


@pytest.mark.skipif(int8_linear.vnni_kernel() is None, reason="no AVX512-VNNI kernel here")
@pytest.mark.parametrize("rows", [1, 2])
def test_vnni_kernel_blocks_its_inputs_like_q8_0(
    rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decode rows take pe's VNNI kernel: inputs quantized per 32, close to the exact product
    and as close as PyTorch's kernel (bfloat16 inputs); the same layer without it falls back."""
    gen = torch.Generator().manual_seed(7)
    weight, x = torch.randn(200, 576, generator=gen), torch.randn(rows, 576, generator=gen)
    layer = Int8Linear(weight, torch.randn(200, generator=gen))
    exact = F.linear(x, layer.dequantized(), layer.bias)
    got = layer(x)
    assert relative_error(got, exact) < 0.01
    calls: list[int] = []
    real = int8_linear.vnni_kernel()
    monkeypatch.setattr(int8_linear, "vnni_kernel", lambda: lambda *a: calls.append(1) or real(*a))
    layer(x)
    assert calls == [1]
    monkeypatch.setattr(int8_linear, "vnni_kernel", lambda: None)  # PE_INT8_KERNEL=torch
    assert relative_error(layer(x), exact) < 0.01  # PyTorch's int8 kernel
    assert relative_error(layer(x), got) < 0.01


def test_vnni_kernel_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PE_INT8_KERNEL", "torch")
    int8_linear.vnni_kernel.cache_clear()
    try:
        assert int8_linear.vnni_kernel() is None
    finally:
        monkeypatch.delenv("PE_INT8_KERNEL")
        int8_linear.vnni_kernel.cache_clear()


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
