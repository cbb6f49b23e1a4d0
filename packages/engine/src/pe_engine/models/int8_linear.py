"""Int8 linears on the CPU (``quantization="int8"``), in llama.cpp's Q8_0 format.

Each weight row is split into blocks of 32 inputs, each stored as int8 with one float16 scale,
``absmax / 127``, rounded as llama.cpp's quantizer rounds it: 8.5 bits a weight, about a quarter
of float32's bytes. Batch-1 decode on the CPU is bound by the bytes of weight a step reads
(benchmarks/RESULTS.md, "Batch-1 decode breakdown"), so fewer bytes make a faster step. Being
Q8_0 exactly, a Q8_0 GGUF's weights (dequantized on load, gguf_model.py) quantize back to the
file's own blocks bit for bit, and pe's int8 holds the same weights as llama.cpp's q8_0.

Products of up to ``KERNEL_ROWS`` rows go through pe's C kernel (``kernels/int8_linear.c``,
AVX512-VNNI or AVX2): the input rows quantized to int8 in blocks of 32 with a scale each, as
llama.cpp does, and multiplied int8 by int8, four rows at a time. Wider batches (prefill, many
sequences), and every product where the kernel cannot be built (no x86 SIMD, no compiler,
``PE_INT8_KERNEL=torch``), dequantize the weight to float32 a slice at a time for ``F.linear``:
the kernel's work grows with every row, while a float32 product of many rows runs near the
machine's peak.

Pure decode steps of up to ``KERNEL_ROWS`` sequences on the kernel do not come through
``forward`` at all: ``models/int8_layers.py`` walks each layer in one C call around the same
kernel.

Why not FBGEMM's dynamic int8 linear, which is fast at every width: it quantizes each call's
input with one scale for all channels, and this model family's activations have outlier
channels. Measured on SmolLM2-135M against float32 (RESULTS.md, "Int8 and bfloat16 quality"):
62% top-1 agreement and +66% perplexity with it, against about 95-96% and +0.4-0.6% for int8
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

from pe_engine.native_kernels import FLAGS, KernelBuildError, build_library

log = logging.getLogger("pe_engine")

# Rows up to which products run on the int8 kernel (and decode steps walk each layer in C,
# models/int8_layers.py); wider ones dequantize the weight, a slice at a time, for F.linear.
# The kernel's time grows with the rows, dequantizing costs about the same at any width:
# measured on the 2-core Xeon (RESULTS.md, "int8 batches"), the kernel still wins at 32 rows.
# A module global so that tests and bench_quality.py can move it.
KERNEL_ROWS = 32
DEQUANTIZED_SLICE = 1 << 20  # weights dequantized at a time past KERNEL_ROWS
BLOCK = 32  # inputs per scale, as Q8_0


class Int8Linear(nn.Module):
    """``y = x @ dequant(weight).T + bias``: ``weight`` int8 ``[out, in]``, ``scale`` float16
    ``[out, ceil(in / 32)]`` (llama.cpp's Q8_0 blocks, as two tensors)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight, self.scale = quantize_q8_0(weight.detach())
        self.bias = None if bias is None else bias.detach().float()
        # the kernel's arguments that never change (read by models/int8_layers.py too), and
        # its scratch (grown on demand)
        bias_pointer = None if self.bias is None else self.bias.data_ptr()
        self.kernel_pointers = (self.weight.data_ptr(), self.scale.data_ptr(), bias_pointer)
        self.fits_kernel = self.in_features % BLOCK == 0
        self._scratch: tuple[torch.Tensor, torch.Tensor] | None = None

    def dequantized(self) -> torch.Tensor:
        """The float32 weight the int8 values and scales stand for."""
        return dequantize_q8_0(self.weight, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        if rows.shape[0] <= KERNEL_ROWS and self.fits_kernel and int8_kernel():
            y = self._kernel(rows)
        else:
            y = self._dequantized_product(rows.float())
        y = y.to(x.dtype)
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def _dequantized_product(self, rows: torch.Tensor) -> torch.Tensor:
        """``F.linear`` on the dequantized weight, a slice of output channels at a time (about
        4 MiB of float32 each): the whole output head dequantized at once is 113 MiB of
        fresh memory a step on the demo model, three times slower (RESULTS.md)."""
        out = torch.empty(rows.shape[0], self.out_features)
        step = max(1, DEQUANTIZED_SLICE // self.in_features)
        for start in range(0, self.out_features, step):
            stop = min(start + step, self.out_features)
            weight = dequantize_q8_0(self.weight[start:stop], self.scale[start:stop])
            out[:, start:stop] = F.linear(rows, weight)
        return out if self.bias is None else out.add_(self.bias)

    def _kernel(self, rows: torch.Tensor) -> torch.Tensor:
        """pe's int8 kernel: float32 rows in, float32 out (a decode step makes ~120 of these
        calls, so the scratch and the weight pointers are made once)."""
        if rows.dtype != torch.float32 or not rows.is_contiguous():
            rows = rows.float().contiguous()
        num_rows = rows.shape[0]
        if self._scratch is None or self._scratch[0].shape[0] < num_rows:
            self._scratch = (
                torch.empty(num_rows, self.in_features, dtype=torch.int8),
                torch.empty(num_rows, self.in_features // BLOCK),
            )
        quantized, scales = self._scratch
        y = torch.empty(num_rows, self.out_features)
        status = int8_kernel()(
            rows.data_ptr(), *self.kernel_pointers, y.data_ptr(), num_rows, self.out_features,
            self.in_features, quantized.data_ptr(), scales.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise ValueError(f"int8 kernel refused in_features={self.in_features}")
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, q8_0"


def quantize_q8_0(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` ``[out, in]`` as int8 values and float16 scales per block of 32 inputs, the
    way llama.cpp's ``quantize_row_q8_0`` makes them: d = absmax / 127 in float32, values
    round(x / d) (halves away from zero) from the float32 d, d stored as float16. A last block
    shorter than 32 is quantized as if padded with zeros."""
    out_features, in_features = weight.shape
    blocks = -(-in_features // BLOCK)
    w = F.pad(weight.float(), (0, blocks * BLOCK - in_features))
    w = w.view(out_features, blocks, BLOCK)
    d = w.abs().amax(dim=2) / 127.0
    inverse = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    scaled = w * inverse[..., None]
    # C's roundf: halves away from zero (torch.round takes them to even)
    halves = (scaled - scaled.trunc()).abs() == 0.5
    rounded = torch.where(halves, scaled.trunc() + scaled.sign(), scaled.round())
    values = rounded.clamp(-127, 127).to(torch.int8).view(out_features, -1)
    return values[:, :in_features].contiguous(), d.to(torch.float16)


def dequantize_q8_0(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    out_features, in_features = values.shape
    blocks = scale.shape[1]
    if blocks * BLOCK != in_features:
        values = F.pad(values, (0, blocks * BLOCK - in_features))
    weight = values.view(out_features, blocks, BLOCK).float().mul_(scale.float()[..., None])
    return weight.view(out_features, -1)[:, :in_features]


@cache
def int8_kernel() -> Any:
    """pe's int8 x int8 kernel (a ctypes function), or None where it does not build (no
    compiler, neither AVX512-VNNI nor AVX2: the file refuses to compile) or
    ``PE_INT8_KERNEL=torch``."""
    lib = int8_kernel_library()
    return None if lib is None else linear_function(lib)


def linear_function(lib: ctypes.CDLL) -> Any:
    """``pe_int8_linear`` of a built library, typed."""
    fn = lib.pe_int8_linear
    fn.restype = ctypes.c_int32
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2
    fn.argtypes += [ctypes.c_int32]
    return fn


def int8_kernel_library() -> ctypes.CDLL | None:
    """The library of the int8 kernel (and of the int8 decode layer, models/int8_layers.py)."""
    if os.environ.get("PE_INT8_KERNEL") == "torch":
        return None
    return _build_int8_library()


@cache
def _build_int8_library(flags: tuple[str, ...] = FLAGS) -> ctypes.CDLL | None:
    """The library built with ``flags`` (the tests also build its AVX2 variant here)."""
    try:
        return build_library("pe_engine.models.kernels", "int8_linear.c", flags)
    except KernelBuildError as exc:
        log.warning("int8 kernel unavailable (%s); int8 layers run dequantized (slow)", exc)
        return None


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
