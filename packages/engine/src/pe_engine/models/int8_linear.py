"""Weight-only int8 linears on the CPU (``quantization="int8"``).

Each weight row (output channel) is stored as int8 with one scale, ``absmax / 127``: a quarter
of float32's bytes, half of bfloat16's. Batch-1 decode on the CPU is bound by the bytes of
weight a step reads (benchmarks/RESULTS.md, "Batch-1 decode breakdown"), so fewer bytes make a
faster step. Activations are never quantized: decode rows go through PyTorch's int8-weight
matrix-vector kernel (``aten._weight_int8pack_mm``: bfloat16 activations, the scales applied in
the kernel); wider batches (prefill, many sequences) dequantize the weight to float32 for one
``F.linear``, because that kernel slows down steeply with more rows.

Why not FBGEMM's dynamic int8 linear, which is faster still: it quantizes each call's input
with one scale for all channels, and this model family's activations have outlier channels.
Measured on SmolLM2-135M against float32 (RESULTS.md, "Int8 and bfloat16 quality"): 62% top-1
agreement and +66% perplexity with it, against about 96% and +0.4% for these weights with
unquantized activations (llama.cpp's q8_0, which scales each block of 32 inputs: 96%, +0.3%).
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

# Rows up to which the int8 matrix-vector kernel runs. Measured on the 2-core Xeon against
# bfloat16 oneDNN: 1.2-1.9x faster at one row, even at two, slower from four. A module global
# so that bench_quality.py can send every row through the kernel to score its numbers.
KERNEL_ROWS = 2


class Int8Linear(nn.Module):
    """``y = x @ dequant(weight).T + bias``, ``weight`` int8 ``[out, in]`` with a per-row scale."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        w = weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.weight = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.scale = scale  # float32, for the dequantized path
        self.kernel_scale = scale.to(torch.bfloat16)
        self.bias = None if bias is None else bias.detach().float()

    def dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight the int8 values and scales stand for, as ``dtype``."""
        return (self.weight.to(torch.float32) * self.scale[:, None]).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if rows.shape[0] <= KERNEL_ROWS and int8_kernel_works():
            y = torch.ops.aten._weight_int8pack_mm(
                rows.to(torch.bfloat16), self.weight, self.kernel_scale
            )
            if self.bias is not None:
                y = y.float() + self.bias
        else:
            y = F.linear(rows.float(), self.dequantized(), self.bias)
        y = y.to(x.dtype)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


@cache
def int8_kernel_works() -> bool:
    """This torch has the int8-weight kernel and it agrees with the dequantized product."""
    try:
        gen = torch.Generator().manual_seed(0)
        layer = Int8Linear(torch.randn(48, 64, generator=gen))
        x = torch.randn(2, 64, generator=gen).to(torch.bfloat16)
        got = torch.ops.aten._weight_int8pack_mm(x, layer.weight, layer.kernel_scale).float()
        want = F.linear(x.float(), layer.dequantized())
        return torch.allclose(got, want, atol=0.1, rtol=0.05)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def quantize_linears(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` by an :class:`Int8Linear` and give a model with
    tied embeddings an int8 output head (a quantized copy of the table; the table itself stays
    for the input lookups); returns how many linears are int8."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear(child.weight, child.bias))
                replaced += 1
    if getattr(model, "lm_head", None) is None:
        model.lm_head = Int8Linear(model.get_submodule("model.embed_tokens").weight)
        replaced += 1
    return replaced
