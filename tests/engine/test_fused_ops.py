"""The fused C kernels between a layer's products (models/fused_ops.py) against the torch
operators they replace, and a model's forward with and without them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pe_engine.models import llama
from pe_engine.models.fused_ops import FusedOps, fused_ops
from pe_engine.models.llama import RMSNorm, RotaryEmbedding, apply_rope


@pytest.fixture(scope="module")
def ops() -> FusedOps:
    built = fused_ops()
    if built is None:
        pytest.skip("the fused kernels do not build here (no C compiler, or PE_FUSED_OPS=0)")
    return built


@pytest.mark.parametrize("rows", [1, 3, 8])
@pytest.mark.parametrize("with_delta", [False, True])
def test_add_rmsnorm_matches_the_residual_addition_and_rmsnorm(
    ops: FusedOps, rows: int, with_delta: bool
) -> None:
    gen = torch.Generator().manual_seed(rows)
    norm = RMSNorm(576, 1e-5)
    norm.weight.data = torch.randn(576, generator=gen)
    residual = torch.randn(rows, 576, generator=gen) * 3
    delta = torch.randn(rows, 576, generator=gen) if with_delta else None
    want_residual = residual + delta if delta is not None else residual.clone()
    out = torch.empty_like(residual)
    ops.add_rmsnorm(residual, delta, norm.weight, out, norm.eps)
    torch.testing.assert_close(residual, want_residual)
    with torch.no_grad():
        torch.testing.assert_close(out, norm(want_residual))


@pytest.mark.parametrize(("num_heads", "num_kv_heads", "head_dim"), [(9, 3, 64), (4, 4, 32)])
def test_rope_rotates_the_query_and_key_heads_in_place(
    ops: FusedOps, num_heads: int, num_kv_heads: int, head_dim: int
) -> None:
    gen = torch.Generator().manual_seed(head_dim)
    rotary = RotaryEmbedding(head_dim, 256, {"rope_theta": 10000.0, "rope_type": "default"})
    rotary.reset_cache(torch.float32)
    positions = torch.tensor([0, 5, 255, 17])
    width = (num_heads + 2 * num_kv_heads) * head_dim
    qkv = torch.randn(len(positions), width, generator=gen)
    rotated = (num_heads + num_kv_heads) * head_dim
    cos, sin = rotary(positions)
    heads = qkv[:, :rotated].view(len(positions), -1, head_dim)
    want = torch.cat((apply_rope(heads, cos, sin).flatten(1), qkv[:, rotated:]), dim=1)
    ops.rope(qkv, positions, rotary.cos_sin, num_heads + num_kv_heads, head_dim)
    torch.testing.assert_close(qkv, want)  # the value heads are left as they were


def test_silu_mul(ops: FusedOps) -> None:
    gate_up = torch.randn(5, 2 * 1536, generator=torch.Generator().manual_seed(0)) * 4
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(ops.silu_mul(gate_up), F.silu(gate) * up)


def test_generation_is_the_same_with_and_without_them(
    ops: FusedOps, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps of up to FUSED_ROWS float32 rows (decode, short prompts) take the fused path; its
    log-probabilities are those of torch's operators, step after step (so the KV it wrote too),
    with several sequences decoded together."""
    from pe_engine import LLM, SamplingParams

    llm = LLM(str(tiny_llama_dir), dtype="float32", max_model_len=128, num_kv_blocks=64)
    model = llm.engine.runner.model
    assert model.can_fuse(torch.zeros(1, model.args.hidden_size))
    prompts = ["Hi", "The capital of France is", "one two three four five six seven eight nine"]
    params = SamplingParams(max_tokens=12, temperature=0, logprobs=3, ignore_eos=True)

    def logprobs() -> list[list[dict[int, float]]]:
        outputs = llm.generate(prompts, params)
        return [
            [{t: lp.logprob for t, lp in step.items()} for step in out.outputs[0].logprobs]
            for out in outputs
        ]

    fused_rows: list[int] = []
    real_forward = model._forward_fused
    model._forward_fused = lambda x, *a: fused_rows.append(x.shape[0]) or real_forward(x, *a)  # type: ignore[method-assign]
    fused = logprobs()
    del model._forward_fused
    assert len(prompts) in fused_rows  # the three sequences' decode steps took the fused path
    monkeypatch.setattr(llama, "fused_ops", lambda: None)
    reference = logprobs()
    for got_steps, want_steps in zip(fused, reference, strict=True):
        for got, want in zip(got_steps, want_steps, strict=True):
            assert got.keys() == want.keys()
            for token, value in want.items():
                assert got[token] == pytest.approx(value, abs=1e-4)
