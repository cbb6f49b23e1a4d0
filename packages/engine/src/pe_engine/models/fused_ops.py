"""The small operations between a layer's products, fused into C calls (float32 on the CPU).

A batch-1 decode step of the demo model runs about 4,000 small torch operations besides its
matrix products: each RMSNorm is six (pow, mean, add, rsqrt and two products), RoPE seven, the
MLP's SiLU and product two, each residual addition one. At a few microseconds of dispatch each
they cost about as much as reading the weights (benchmarks/RESULTS.md, "Batch-1 decode
breakdown"). ``kernels/fused_ops.c`` does each group in one call: residual addition with the
next RMSNorm, RoPE in place on the fused qkv rows, SiLU times up. The model takes this path for
steps of up to ``FUSED_ROWS`` float32 rows (decode); wider steps keep torch's operators, which
thread and vectorise better over many rows.

``PE_FUSED_OPS=0`` turns the path off (for side-by-side measurements).
"""

from __future__ import annotations

import ctypes
import logging
import os
from functools import cache
from typing import Any

import torch

from pe_engine.native_kernels import KernelBuildError, addresses, build_library

log = logging.getLogger("pe_engine")

FUSED_ROWS = 8
_I64, _PTR, _F32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float


class FusedOps:
    """ctypes calls into the fused kernels; every tensor float32, contiguous rows, on the CPU."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._add_rmsnorm = _declare(lib.pe_add_rmsnorm, [_PTR] * 4 + [_I64] * 2 + [_F32])
        self._rope = _declare(lib.pe_rope, [_PTR, _I64, _PTR, _PTR] + [_I64] * 3)
        self._silu_mul = _declare(lib.pe_silu_mul, [_PTR] * 2 + [_I64] * 2)

    def addresses(self) -> tuple[int, ...]:
        """add_rmsnorm's, rope's and silu_mul's addresses (models/int8_layers.py)."""
        return addresses(self._add_rmsnorm, self._rope, self._silu_mul)

    def add_rmsnorm(
        self,
        residual: torch.Tensor,
        delta: torch.Tensor | None,
        weight: torch.Tensor,
        out: torch.Tensor,
        eps: float,
    ) -> None:
        """``residual += delta`` (in place, when given), then ``out = rmsnorm(residual)``."""
        num_rows, width = residual.shape
        if delta is not None and not delta.is_contiguous():
            delta = delta.contiguous()
        delta_pointer = None if delta is None else delta.data_ptr()
        self._add_rmsnorm(
            residual.data_ptr(), delta_pointer, weight.data_ptr(), out.data_ptr(),
            num_rows, width, eps,
        )  # fmt: skip

    def rope(
        self,
        qkv: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        num_heads: int,
        head_dim: int,
    ) -> None:
        """RoPE in place on the first ``num_heads`` heads of each row of ``qkv``."""
        num_rows, width = qkv.shape
        self._rope(
            qkv.data_ptr(), width, positions.data_ptr(), cos_sin.data_ptr(),
            num_rows, num_heads, head_dim,
        )  # fmt: skip

    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        num_rows, width = gate_up.shape
        out = gate_up.new_empty(num_rows, width // 2)
        self._silu_mul(gate_up.data_ptr(), out.data_ptr(), num_rows, width // 2)
        return out


def _declare(fn: Any, argtypes: list[Any]) -> Any:
    fn.restype = None
    fn.argtypes = argtypes
    return fn


@cache
def fused_ops() -> FusedOps | None:
    """The fused kernels, or None where they do not build (no C compiler) or
    ``PE_FUSED_OPS=0``: the model then runs torch's operators."""
    if os.environ.get("PE_FUSED_OPS") == "0":
        return None
    try:
        return FusedOps(build_library("pe_engine.models.kernels", "fused_ops.c"))
    except KernelBuildError as exc:
        log.info("fused CPU kernels unavailable (%s); using torch's operators", exc)
        return None
