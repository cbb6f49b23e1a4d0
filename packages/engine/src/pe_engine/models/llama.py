"""The Llama family (Llama, Mistral, Qwen2, Qwen3) on flattened, paged batches.

Inputs are flattened over the batch: ``input_ids`` or ``inputs_embeds`` with one row per new
token, ``positions`` per row, and the step's :class:`AttentionMetadata`. q/k/v and gate/up
are fused projections (the loader fuses the checkpoint's separate tensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from pe_engine.attention.backend import AttentionBackend, AttentionMetadata
from pe_engine.models.fused_ops import FUSED_ROWS, FusedOps, fused_ops

if TYPE_CHECKING:
    from pe_engine.models.int8_layers import Int8DecodeLayers


@dataclass(frozen=True)
class LlamaArgs:
    """The config values the model reads, with each architecture's quirks resolved."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_parameters: dict[str, Any]
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    qk_norm: bool

    @classmethod
    def from_hf_config(cls, config: Any, architecture: str) -> LlamaArgs:
        num_heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
        attention_bias = bool(getattr(config, "attention_bias", False))
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported (only 'silu').")
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=num_heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or num_heads,
            head_dim=head_dim,
            rms_norm_eps=config.rms_norm_eps,
            rope_parameters=rope_parameters(config),
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=architecture == "Qwen2ForCausalLM" or attention_bias,
            o_bias=architecture != "Qwen2ForCausalLM" and attention_bias,
            qk_norm=architecture == "Qwen3ForCausalLM",
        )


def rope_parameters(config: Any) -> dict[str, Any]:
    """RoPE settings whether the config stores them as transformers 5's ``rope_parameters``
    or as the older ``rope_theta`` + ``rope_scaling``."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None)
    if not params.get("rope_type") and isinstance(scaling, dict):
        params.update(scaling)
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype == torch.float32:  # no no-op casts: a decode step runs ~60 of these
            return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for every position up to ``max_positions`` (rotate-half layout)."""

    def __init__(self, head_dim: int, max_positions: int, parameters: dict[str, Any]) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.max_positions = max_positions
        self.parameters_ = parameters
        self.register_buffer("cos_sin", torch.empty(max_positions, 2, head_dim), persistent=False)

    def reset_cache(self, dtype: torch.dtype) -> None:
        """(Re)compute the tables on the buffer's device (call after ``to_empty``)."""
        device = self.cos_sin.device
        inv_freq = _inv_freq(self.head_dim, self.parameters_).to(device)
        t = torch.arange(self.max_positions, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos_sin = torch.stack((emb.cos(), emb.sin()), dim=1).to(dtype)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos_sin = self.cos_sin[positions]
        return cos_sin[:, 0, None, :], cos_sin[:, 1, None, :]  # [N, 1, head_dim] each


def _inv_freq(head_dim: int, parameters: dict[str, Any]) -> torch.Tensor:
    theta = float(parameters["rope_theta"])
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = parameters["rope_type"]
    if rope_type == "default":
        return inv_freq
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, parameters)
    raise ValueError(f"rope_type {rope_type!r} is not supported (default, llama3).")


def _llama3_inv_freq(inv_freq: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class LlamaAttention(nn.Module):
    def __init__(self, args: LlamaArgs, backend: AttentionBackend) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            args.num_heads,
            args.num_kv_heads,
            args.head_dim,
        )
        self.q_size = args.num_heads * args.head_dim
        self.kv_size = args.num_kv_heads * args.head_dim
        self.scale = args.head_dim**-0.5
        self.qkv_proj = nn.Linear(args.hidden_size, self.q_size + 2 * self.kv_size, args.qkv_bias)
        self.o_proj = nn.Linear(self.q_size, args.hidden_size, bias=args.o_bias)
        if args.qk_norm:
            self.q_norm = RMSNorm(args.head_dim, args.rms_norm_eps)
            self.k_norm = RMSNorm(args.head_dim, args.rms_norm_eps)
        self.qk_norm = args.qk_norm
        self.backend = backend
        self.kv_cache = torch.empty(0)  # set by the runner: [2, heads, blocks, block_size, dim]

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        qkv = self.qkv_proj(x)
        v = qkv[:, self.q_size + self.kv_size :].view(-1, self.num_kv_heads, self.head_dim)
        qk = qkv[:, : self.q_size + self.kv_size].view(
            -1, self.num_heads + self.num_kv_heads, self.head_dim
        )
        if self.qk_norm:
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
            qk = torch.cat((self.q_norm(q), self.k_norm(k)), dim=1)
        # one rotation for the query and key heads together (half the small ops of two)
        q, k = apply_rope(qk, cos, sin).split([self.num_heads, self.num_kv_heads], dim=1)
        out = self.backend.forward(q, k, v, self.kv_cache, metadata, self.scale)
        return self.o_proj(out)

    def forward_fused(
        self,
        ops: FusedOps,
        x: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """``forward`` with RoPE applied in place on the qkv rows by one C call."""
        qkv = self.qkv_proj(x)
        ops.rope(qkv, positions, cos_sin, self.num_heads + self.num_kv_heads, self.head_dim)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=1)
        q = q.view(-1, self.num_heads, self.head_dim)
        k = k.view(-1, self.num_kv_heads, self.head_dim)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        return self.o_proj(self.backend.forward(q, k, v, self.kv_cache, metadata, self.scale))


class LlamaMLP(nn.Module):
    def __init__(self, args: LlamaArgs) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(args.hidden_size, 2 * args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, args: LlamaArgs, backend: AttentionBackend) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.self_attn = LlamaAttention(args, backend)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = LlamaMLP(args)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, metadata)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_fused(
        self,
        ops: FusedOps,
        residual: torch.Tensor,
        delta: torch.Tensor | None,
        normed: torch.Tensor,
        positions: torch.Tensor,
        cos_sin: torch.Tensor,
        metadata: AttentionMetadata,
    ) -> torch.Tensor:
        """The layer on the residual stream, which it updates in place: adds the previous
        layer's output ``delta``, and returns its own (the next layer adds it). ``normed`` is
        scratch of the residual's shape; ``cos_sin`` the rotary table."""
        eps = self.input_layernorm.eps
        ops.add_rmsnorm(residual, delta, self.input_layernorm.weight, normed, eps)
        delta = self.self_attn.forward_fused(ops, normed, positions, cos_sin, metadata)
        ops.add_rmsnorm(residual, delta, self.post_attention_layernorm.weight, normed, eps)
        mlp = self.mlp
        return mlp.down_proj(ops.silu_mul(mlp.gate_up_proj(normed)))


class LlamaModel(nn.Module):
    def __init__(self, args: LlamaArgs, backend: AttentionBackend, max_positions: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.rotary_emb = RotaryEmbedding(args.head_dim, max_positions, args.rope_parameters)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(args, backend) for _ in range(args.num_layers)
        )
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Llama-family decoder: ``forward`` -> final hidden states, ``compute_logits`` -> logits."""

    def __init__(self, args: LlamaArgs, backend: AttentionBackend, max_positions: int) -> None:
        super().__init__()
        self.args = args
        self.model = LlamaModel(args, backend, max_positions)
        if not args.tie_word_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        # int8 decode steps in one C call per layer, where the runner found they can run
        self.int8_layers: Int8DecodeLayers | None = None

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.layers

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def forward(
        self,
        positions: torch.Tensor,
        metadata: AttentionMetadata,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[num_tokens]`` ids or ``[num_tokens, hidden]`` embeds -> ``[num_tokens, hidden]``."""
        if inputs_embeds is None:
            assert input_ids is not None, "input_ids or inputs_embeds is required"
            inputs_embeds = self.embed_tokens(input_ids)
        x = inputs_embeds
        walk = self.int8_layers
        if walk is not None and not walk.can_run(x, metadata):
            walk = None
        if (walk is not None or x.shape[0] <= FUSED_ROWS) and self.can_fuse(x):
            return self._forward_fused(x, positions, metadata, walk)
        cos, sin = self.model.rotary_emb(positions)
        for layer in self.model.layers:
            x = layer(x, cos, sin, metadata)
        return self.model.norm(x)

    def can_fuse(self, x: torch.Tensor) -> bool:
        """Whether the fused C kernels can run this step (float32 rows on the CPU; a model
        with q/k norms keeps torch's operators)."""
        return (
            x.dtype == torch.float32
            and x.device.type == "cpu"
            and self.model.rotary_emb.cos_sin.dtype == torch.float32
            and not self.args.qk_norm
            and fused_ops() is not None
        )

    def _forward_fused(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        metadata: AttentionMetadata,
        walk: Int8DecodeLayers | None,
    ) -> torch.Tensor:
        """``forward`` for a few float32 rows on the CPU: the residual stream is one buffer
        each layer adds its output to inside the next norm's C call (``walk``, when given: every
        layer in one C call of the int8 layer walk)."""
        ops = fused_ops()
        assert ops is not None
        residual = x.contiguous().clone()  # updated in place: never the caller's tensor
        normed = torch.empty_like(residual)
        cos_sin = self.model.rotary_emb.cos_sin
        delta = None
        if walk is not None:
            walk.run(residual, positions, metadata)
        else:
            for layer in self.model.layers:
                delta = layer.forward_fused(
                    ops, residual, delta, normed, positions, cos_sin, metadata
                )
        norm = self.model.norm
        ops.add_rmsnorm(residual, delta, norm.weight, normed, norm.eps)
        return normed

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits of the given rows (only the rows that sample). A tied model has no
        ``lm_head`` of its own unless the runner gave it one (a packed copy of the table)."""
        head = getattr(self, "lm_head", None)
        if head is not None:
            return head(hidden).float()
        return F.linear(hidden, self.model.embed_tokens.weight).float()
