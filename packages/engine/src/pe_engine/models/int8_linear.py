"""Int8 linears on the CPU (``quantization="int8"``).

Each weight row (output channel) is stored as int8 with one scale, ``absmax / 127``: a quarter
of float32's bytes, half of bfloat16's. Batch-1 decode on the CPU is bound by the bytes of
weight a step reads (benchmarks/RESULTS.md, "Batch-1 decode breakdown"), so fewer bytes make a
faster step. Decode rows (up to ``KERNEL_ROWS``) go through, in order of preference:

- pe's C kernel (``kernels/int8_linear.c``, AVX512-VNNI): the input rows quantized to int8 in
  blocks of 32 with a scale each, as llama.cpp's q8_0 does, and multiplied int8 by int8;
- PyTorch's int8-weight matrix-vector kernel (``aten._weight_int8pack_mm``, bfloat16 inputs)
  where that kernel cannot be built.

Wider batches (prefill, many sequences) dequantize the weight to float32 for one ``F.linear``:
both kernels read the weight once per row or so and slow down steeply with more rows.

Pure decode steps of up to eight sequences on the VNNI kernel do not come through ``forward``
at all: ``models/int8_layers.py`` walks each layer in one C call around the same kernel.

Why not FBGEMM's dynamic int8 linear, which is fast at every width: it quantizes each call's
input with one scale for all channels, and this model family's activations have outlier
channels. Measured on SmolLM2-135M against float32 (RESULTS.md, "Int8 and bfloat16 quality"):
62% top-1 agreement and +66% perplexity with it, against about 95-96% and +0.4-0.6% for these
weights with blocked or unquantized inputs (llama.cpp's q8_0: 96%, +0.3%).
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pe_engine.native_kernels import KernelBuildError, build_library

log = logging.getLogger("pe_engine")

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
        # the VNNI kernel's arguments that never change (read by models/int8_layers.py too),
        # and its scratch (grown on demand)
        bias_pointer = None if self.bias is None else self.bias.data_ptr()
        self.kernel_pointers = (self.weight.data_ptr(), self.scale.data_ptr(), bias_pointer)
        self.fits_kernel = self.in_features % 64 == 0  # the VNNI kernel's unit of input
        self._scratch: tuple[torch.Tensor, torch.Tensor] | None = None

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the int8 values and scales stand for."""
        return self.weight.to(torch.float32) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if rows.shape[0] <= KERNEL_ROWS and self.fits_kernel and vnni_kernel():
            y = self._vnni(rows)
        elif rows.shape[0] <= KERNEL_ROWS and int8_kernel_works():
            y = torch.ops.aten._weight_int8pack_mm(
                rows.to(torch.bfloat16), self.weight, self.kernel_scale
            )
            if self.bias is not None:
                y = y.float() + self.bias
        else:
            y = F.linear(rows.float(), self.dequantized(), self.bias)
        y = y.to(x.dtype)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def _vnni(self, rows: torch.Tensor) -> torch.Tensor:
        """pe's VNNI kernel: float32 rows in, float32 out (a decode step makes ~120 of these
        calls, so the scratch and the weight pointers are made once)."""
        if rows.dtype != torch.float32 or not rows.is_contiguous():
            rows = rows.float().contiguous()
        num_rows = rows.shape[0]
        if self._scratch is None or self._scratch[0].shape[0] < num_rows:
            self._scratch = (
                torch.empty(num_rows, self.in_features, dtype=torch.int8),
                torch.empty(num_rows, self.in_features // 4),
            )
        quantized, scales = self._scratch
        y = torch.empty(num_rows, self.out_features)
        status = vnni_kernel()(
            rows.data_ptr(), *self.kernel_pointers, y.data_ptr(), num_rows, self.out_features,
            self.in_features, quantized.data_ptr(), scales.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise ValueError(f"int8 kernel refused in_features={self.in_features}")
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


@cache
def vnni_kernel() -> Any:
    """pe's int8 x int8 kernel (a ctypes function), or None where it does not build (no
    compiler, no AVX512-VNNI: the file refuses to compile) or ``PE_INT8_KERNEL=torch``."""
    lib = vnni_kernel_library()
    if lib is None:
        return None
    fn = lib.pe_int8_linear
    fn.restype = ctypes.c_int32
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2
    fn.argtypes += [ctypes.c_int32]
    return fn


def vnni_kernel_library() -> ctypes.CDLL | None:
    """The library of the int8 kernel (and of the int8 decode layer, models/int8_layers.py)."""
    if os.environ.get("PE_INT8_KERNEL") == "torch":
        return None
    return _build_vnni_library()


@cache
def _build_vnni_library() -> ctypes.CDLL | None:
    try:
        return build_library("pe_engine.models.kernels", "int8_linear.c")
    except KernelBuildError as exc:
        log.info("int8 VNNI kernel unavailable (%s); using PyTorch's int8 kernel", exc)
        return None


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
