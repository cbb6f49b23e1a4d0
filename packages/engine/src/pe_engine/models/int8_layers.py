"""Int8 decode steps with one C call per layer (``quantization="int8"`` on x86 CPUs).

With every product of a layer on pe's int8 kernel, a decode step of the layer needs no torch
operator: ``pe_int8_decode_layer`` (``kernels/int8_linear.c``) runs the norms, the products,
RoPE, the K/V store, the paged attention and the MLP in C, calling the fused small ops and
the attention kernel through their own libraries' function pointers. What it saves is the
Python and dispatch between them (some thirty calls a layer), about a third of an int8 step
on the demo model (benchmarks/RESULTS.md).

The model takes this path for steps whose rows are all decode queries (at most
``int8_linear.KERNEL_ROWS`` of them, float32 activations) when every linear of every layer is
an :class:`~pe_engine.models.int8_linear.Int8Linear` the kernel can run and attention is
:class:`~pe_engine.attention.cpu.CpuAttentionBackend`; anything else runs layer by layer.
"""

from __future__ import annotations

import ctypes
from ctypes import c_float, c_int32, c_int64, c_void_p
from typing import TYPE_CHECKING, Any

import torch

from pe_engine.models import int8_linear
from pe_engine.models.int8_linear import Int8Linear, int8_kernel_library

if TYPE_CHECKING:
    from pe_engine.attention.backend import AttentionMetadata
    from pe_engine.models.llama import LlamaDecoderLayer, LlamaForCausalLM


class _Kernels(ctypes.Structure):
    _fields_ = [
        (name, c_void_p) for name in ("add_rmsnorm", "rope", "silu_mul", "store_kv", "decode")
    ]


class _Weight(ctypes.Structure):
    _fields_ = [("weight", c_void_p), ("scale", c_void_p), ("bias", c_void_p), ("n", c_int64),
                ("k", c_int64)]  # fmt: skip


class _Layer(ctypes.Structure):
    _fields_ = [
        ("input_norm", c_void_p), ("post_norm", c_void_p), ("eps", c_float),
        ("attn_scale", c_float), ("qkv", _Weight), ("o", _Weight), ("gate_up", _Weight),
        ("down", _Weight), ("k_pool", c_void_p), ("v_pool", c_void_p), ("num_slots", c_int64),
        ("block_size", c_int64), ("num_heads", c_int64), ("num_kv_heads", c_int64),
        ("head_dim", c_int64),
    ]  # fmt: skip


_SCRATCH = ("normed", "qkv", "q", "attn", "gate_up", "act", "delta", "xq", "xs")


class _Step(ctypes.Structure):
    _fields_ = [
        ("num_rows", c_int64), ("positions", c_void_p), ("slot_mapping", c_void_p),
        ("block_tables", c_void_p), ("context_lens", c_void_p), ("table_stride", c_int64),
        ("cos_sin", c_void_p), *[(name, c_void_p) for name in _SCRATCH], ("threads", c_int32),
    ]  # fmt: skip


class Int8DecodeLayers:
    """The C layer walk for one model: its layers' fixed pointers, made once the KV pool is
    allocated (and again should it move), and scratch per step width."""

    def __init__(self, model: LlamaForCausalLM, kernels: _Kernels, run_layer: Any) -> None:
        self._model = model
        self._kernels = kernels
        self._run_layer = run_layer
        self._layers: list[_Layer] = []
        self._pool_pointer = -1
        self._scratch: dict[int, tuple[_Step, list[torch.Tensor]]] = {}

    @classmethod
    def for_model(cls, model: LlamaForCausalLM) -> Int8DecodeLayers | None:
        """The walk for ``model``, or None where it cannot run it (see the module's text)."""
        from pe_engine.attention import cpu as cpu_attention
        from pe_engine.models.fused_ops import fused_ops

        lib, ops = int8_kernel_library(), fused_ops()
        layers = list(model.layers)
        if lib is None or ops is None or model.args.qk_norm or not layers:
            return None
        if not all(_runs_on_the_kernel(layer) for layer in layers):
            return None
        backend = layers[0].self_attn.backend
        if not isinstance(backend, cpu_attention.CpuAttentionBackend):
            return None
        kernels = _Kernels(*ops.addresses(), *backend.kernel_addresses())
        run_layer = lib.pe_int8_decode_layer
        run_layer.restype = c_int32
        run_layer.argtypes = [ctypes.POINTER(_Kernels), ctypes.POINTER(_Layer),
                              ctypes.POINTER(_Step), c_void_p]  # fmt: skip
        return cls(model, kernels, run_layer)

    @staticmethod
    def can_run(x: torch.Tensor, metadata: AttentionMetadata) -> bool:
        """Every row of the step is a decode query, and there are at most
        ``int8_linear.KERNEL_ROWS`` of them (past that the products dequantize)."""
        return (
            x.shape[0] <= int8_linear.KERNEL_ROWS
            and not metadata.prefills
            and metadata.num_decode_tokens == metadata.num_tokens
        )

    def run(
        self, residual: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata
    ) -> None:
        """Every layer on the residual stream (``[rows, hidden]`` float32, updated in place)."""
        step = self._step(residual.shape[0], positions, metadata)
        layers = self._layer_structs()
        kernels, pointer = ctypes.byref(self._kernels), residual.data_ptr()
        for layer in layers:
            status = self._run_layer(kernels, ctypes.byref(layer), ctypes.byref(step), pointer)
            if status != 0:
                raise RuntimeError(f"int8 decode layer failed (status {status})")

    def _step(self, num_rows: int, positions: torch.Tensor, metadata: AttentionMetadata) -> _Step:
        if num_rows not in self._scratch:
            self._scratch[num_rows] = self._new_scratch(num_rows)
        step, _ = self._scratch[num_rows]
        tables, lens = metadata.decode_block_tables, metadata.decode_context_lens
        assert tables is not None and lens is not None
        step.positions = positions.data_ptr()
        step.slot_mapping = metadata.slot_mapping.data_ptr()
        step.block_tables, step.context_lens = tables.data_ptr(), lens.data_ptr()
        step.table_stride = tables.stride(0)
        step.threads = torch.get_num_threads()
        return step

    def _new_scratch(self, num_rows: int) -> tuple[_Step, list[torch.Tensor]]:
        args = self._model.args
        q_size = args.num_heads * args.head_dim
        width = q_size + 2 * args.num_kv_heads * args.head_dim
        widest = max(args.hidden_size, args.intermediate_size, q_size)
        sizes = {
            "normed": args.hidden_size, "qkv": width, "q": q_size, "attn": q_size,
            "gate_up": 2 * args.intermediate_size, "act": args.intermediate_size,
            "delta": args.hidden_size, "xq": widest, "xs": widest // 32,
        }  # fmt: skip
        tensors = [
            torch.empty(num_rows, sizes[name], dtype=torch.int8 if name == "xq" else None)
            for name in _SCRATCH
        ]
        step = _Step(num_rows=num_rows, cos_sin=self._model.model.rotary_emb.cos_sin.data_ptr())
        for name, tensor in zip(_SCRATCH, tensors, strict=True):
            setattr(step, name, tensor.data_ptr())
        return step, tensors

    def _layer_structs(self) -> list[_Layer]:
        layers = list(self._model.layers)
        pool = layers[0].self_attn.kv_cache.data_ptr()
        if pool != self._pool_pointer:  # first step, or the runner reallocated the pool
            self._layers = [_layer_struct(layer) for layer in layers]
            self._pool_pointer = pool
        return self._layers


def _runs_on_the_kernel(layer: LlamaDecoderLayer) -> bool:
    linears = [layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
               layer.mlp.down_proj]  # fmt: skip
    return all(isinstance(lin, Int8Linear) and lin.fits_kernel for lin in linears)


def _weight(linear: Int8Linear) -> _Weight:
    return _Weight(*linear.kernel_pointers, linear.out_features, linear.in_features)


def _layer_struct(layer: LlamaDecoderLayer) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    kv_cache = attn.kv_cache  # [2, kv_heads, blocks, block_size, head_dim]
    _, num_kv_heads, num_blocks, block_size, head_dim = kv_cache.shape
    assert kv_cache.dtype == torch.float32 and kv_cache.is_contiguous()
    return _Layer(
        input_norm=layer.input_layernorm.weight.data_ptr(),
        post_norm=layer.post_attention_layernorm.weight.data_ptr(),
        eps=layer.input_layernorm.eps, attn_scale=attn.scale,
        qkv=_weight(attn.qkv_proj), o=_weight(attn.o_proj),
        gate_up=_weight(mlp.gate_up_proj), down=_weight(mlp.down_proj),
        k_pool=kv_cache[0].data_ptr(), v_pool=kv_cache[1].data_ptr(),
        num_slots=num_blocks * block_size, block_size=block_size,
        num_heads=attn.num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
    )  # fmt: skip
