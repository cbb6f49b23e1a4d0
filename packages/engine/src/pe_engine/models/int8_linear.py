"""Int8 linears on the CPU (``quantization="int8"``).

Each weight row (output channel) is stored as int8 with one scale, ``absmax / 127``: a quarter
of float32's bytes, half of bfloat16's. Batch-1 decode on the CPU is bound by the bytes of
weight a step reads (benchmarks/RESULTS.md, "Batch-1 decode breakdown"), so fewer bytes make a
faster step. The product is FBGEMM's dynamic int8 linear (``quantized::linear_dynamic``, the
kernel behind PyTorch's dynamic quantization): each call quantizes its input rows to 8 bits with
one scale for the call, multiplies in int32 and returns float32. On CPUs without VNNI the int8
dot products could saturate 16-bit sums, so there the input keeps 7 bits of range, as PyTorch's
dynamic quantization does everywhere (twice the rounding error).
Measured on the 2-core Xeon at one row (RESULTS.md), it was 1.1-3x faster than the bfloat16
oneDNN path and 3-4x faster than float32 per layer, where PyTorch's weight-only int8 kernel
(``_weight_int8pack_mm``) was no faster than bfloat16 and slowed down steeply with more rows.
The accuracy cost is measured, not assumed: top-1 agreement and perplexity against float32 in
RESULTS.md ("Int8 quality").

Where this torch has no FBGEMM, the layer dequantizes its weight for ``F.linear`` (the same
numbers, without the speed).
"""

from __future__ import annotations

import warnings
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    """``y = x @ dequant(weight).T + bias``, ``weight`` int8 ``[out, in]`` with a per-row scale."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.detach().float()
        qweight = quantize_rows(weight.detach().float())
        if fbgemm_available():
            self.packed: object | None = torch.ops.quantized.linear_prepack(qweight, self.bias)
            self.qweight: torch.Tensor | None = None
        else:
            self.packed, self.qweight = None, qweight

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the int8 values and scales stand for."""
        if self.packed is not None:
            qweight, _ = torch.ops.quantized.linear_unpack(self.packed)
        else:
            qweight = self.qweight
        return qweight.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if x.dtype != torch.float32:  # (a decode step runs ~120 of these: no no-op casts)
            rows = rows.float()
        if self.packed is not None:
            y = torch.ops.quantized.linear_dynamic(rows, self.packed, reduce_range())
        else:
            y = F.linear(rows, self.dequantized(), self.bias)
        if x.dtype != torch.float32:
            y = y.to(x.dtype)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kernel = "fbgemm" if self.packed is not None else "dequantized"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 {kernel}"


def quantize_rows(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as a per-row (output channel) symmetric qint8 tensor, scale ``absmax / 127``."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    zero_points = torch.zeros(weight.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        # torch 2.13 marks quantized tensors deprecated; FBGEMM's prepack still takes them
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor", UserWarning)
        return torch.quantize_per_channel(weight, scale.double(), zero_points, 0, torch.qint8)


@cache
def fbgemm_available() -> bool:
    """This torch build has FBGEMM's quantized linears (x86 CPUs) and they run."""
    engines = torch.backends.quantized.supported_engines
    if "fbgemm" not in engines and "x86" not in engines:
        return False
    try:
        packed = torch.ops.quantized.linear_prepack(quantize_rows(torch.ones(8, 8)), None)
        torch.ops.quantized.linear_dynamic(torch.ones(1, 8), packed, reduce_range())
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


@cache
def reduce_range() -> bool:
    """Quantize inputs to 7 bits: on CPUs without VNNI, where 8 could saturate FBGEMM's sums."""
    return not bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


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
