"""Linear layers on the CPU through oneDNN, with each weight reordered once at load time.

``F.linear`` on the CPU calls the BLAS (MKL in PyTorch's wheels), which repacks the weight on
every call and, on AMD CPUs, runs a generic code path: on this project's 2-core AMD EPYC a
``[32, 576] x [576, 3072]`` float32 product takes 0.96 ms through ``F.linear`` and 0.34 ms through
oneDNN with the weight in oneDNN's blocked layout (2048 rows: 44 ms vs 18 ms). The results are
float32 products too (max abs error to a float64 reference 1e-4 on those shapes, as the BLAS').

The oneDNN entry points are the ones PyTorch's own compiler uses for CPU linears
(``mkldnn::_reorder_linear_weight``, ``mkldnn::_linear_pointwise``); where this torch build
lacks them, or a one-off check disagrees with ``F.linear``, nothing is changed.
"""

from __future__ import annotations

import logging
from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("pe_engine")
PACKED_DTYPES = (torch.float32, torch.bfloat16)


class PackedLinear(nn.Module):
    """``y = x @ weight.T + bias`` with ``weight`` held in oneDNN's layout (no gradients)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), None)
        self.bias = None if bias is None else bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x if x.dim() == 2 else x.reshape(-1, self.in_features)
        num_rows = rows.shape[0]
        padded = padded_rows(num_rows)
        if padded != num_rows:
            rows = F.pad(rows, (0, 0, 0, padded - num_rows))
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, self.bias, "none", [], "")
        if padded != num_rows:
            y = y[:num_rows]
        return y if x.dim() == 2 else y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn"


def padded_rows(num_rows: int) -> int:
    """The row count a product runs at. oneDNN keeps state for every input shape it sees
    (unbounded, the server's memory would creep), so rows round up to about 40 sizes up to
    2048: powers of two to 32, then multiples of 16 to 256, of 64 to 1024, of 128 beyond. Extra
    rows cost at most a quarter past 256 rows, an eighth past 1024."""
    if num_rows <= 32:
        return 1 << max(0, num_rows - 1).bit_length()
    step = 16 if num_rows <= 256 else 64 if num_rows <= 1024 else 128
    return -(-num_rows // step) * step


@cache
def onednn_linear_works(dtype: torch.dtype = torch.float32) -> bool:
    """oneDNN is built in, its linear ops exist, and they agree with ``F.linear`` here; for
    bfloat16 also only where the CPU computes it natively (AVX512-BF16 or AMX): elsewhere
    oneDNN emulates it and a bfloat16 model keeps ``F.linear``."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16 and not native_bf16():
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(5, 64, generator=gen).to(dtype)
        w = torch.randn(48, 64, generator=gen).to(dtype)
        b = torch.randn(48, generator=gen).to(dtype)
        tol = 1e-4 if dtype == torch.float32 else 5e-2
        packed, plain = PackedLinear(w, b)(x).float(), F.linear(x, w, b).float()
        return torch.allclose(packed, plain, atol=tol, rtol=tol)
    except (AttributeError, RuntimeError) as exc:
        log.info("oneDNN %s linear unavailable (%s); using F.linear", dtype, exc)
        return False


def native_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def pack_linears(model: nn.Module) -> int:
    """Replace every float32 or bfloat16 ``nn.Linear`` below ``model`` by a
    :class:`PackedLinear`; returns how many. The originals' weights are dropped with them."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.weight.dtype in PACKED_DTYPES:
                setattr(parent, name, PackedLinear(child.weight, child.bias))
                replaced += 1
    return replaced
