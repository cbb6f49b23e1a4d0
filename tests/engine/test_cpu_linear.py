"""oneDNN linears on the CPU: the same products as F.linear, swapped in for every linear (and
a tied model's head), and the same greedy tokens as the F.linear path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pe_engine import LLM, SamplingParams
from pe_engine.models.cpu_linear import (
    PackedLinear,
    native_bf16,
    onednn_linear_works,
    pack_linears,
)

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.skipif(not onednn_linear_works(), reason="this torch build has no oneDNN linear"),
]


@pytest.mark.parametrize("shape", [(1, 96), (7, 96), (3, 5, 96)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_f_linear(shape: tuple[int, ...], bias: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=gen)
    w = torch.randn(40, 96, generator=gen)
    b = torch.randn(40, generator=gen) if bias else None
    got = PackedLinear(w, b)(x)
    assert got.shape == (*shape[:-1], 40)
    torch.testing.assert_close(got, F.linear(x, w, b), atol=1e-4, rtol=1e-4)


def test_pack_linears_replaces_every_float32_linear() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Sequential(nn.Linear(16, 4, bias=False)))
    half = nn.Linear(8, 8).to(torch.float16)
    model.append(half)
    x = torch.randn(3, 8)
    expected = model[:3](x)
    assert pack_linears(model) == 2
    assert isinstance(model[0], PackedLinear) and isinstance(model[2][0], PackedLinear)
    assert model[3] is half  # float16 keeps F.linear
    torch.testing.assert_close(model[:3](x), expected, atol=1e-5, rtol=1e-5)


def test_bfloat16_linears_are_packed_too_and_agree_with_f_linear() -> None:
    """Issue 22: bfloat16 linears go through oneDNN's packed layout (where the runner packs
    them: CPUs with native bfloat16); products equal F.linear's to bfloat16 precision."""
    layer = nn.Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(7, 64).to(torch.bfloat16)
    expected = layer(x).float()
    model = nn.Sequential(layer)
    assert pack_linears(model) == 1 and isinstance(model[0], PackedLinear)
    torch.testing.assert_close(model(x).float(), expected, atol=3e-2, rtol=3e-2)


def llm_with_linears(model_dir: Path, dtype: str, cpu_linear: str) -> LLM:
    """An engine whose linears are packed exactly when ``cpu_linear="onednn"`` (checked)."""
    llm = LLM(
        str(model_dir), dtype=dtype, device="cpu", max_model_len=128, num_kv_blocks=32,
        block_size=8, cpu_linear=cpu_linear,
    )  # fmt: skip
    linears = [m for m in llm.engine.runner.model.modules() if isinstance(m, PackedLinear)]
    assert bool(linears) == (cpu_linear == "onednn")
    return llm


@pytest.mark.parametrize("model_fixture", ["tiny_llama_dir", "tiny_llama_tied_dir"])
def test_onednn_and_torch_linears_generate_the_same_tokens(
    model_fixture: str, request: pytest.FixtureRequest
) -> None:
    model_dir = Path(request.getfixturevalue(model_fixture))
    prompts = [[17, 905, 33, 4021, 88, 1500, 7], [260, 3111, 42, 999, 12, 640, 2048, 5, 77]]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logprobs=2)
    outputs = {}
    for choice in ("torch", "onednn"):
        llm = llm_with_linears(model_dir, "float32", choice)
        batch = [{"prompt_token_ids": p} for p in prompts]
        outputs[choice] = llm.generate(batch, params, use_tqdm=False)
    for by_torch, by_onednn in zip(outputs["torch"], outputs["onednn"], strict=True):
        assert by_onednn.outputs[0].token_ids == by_torch.outputs[0].token_ids
        for a, b in zip(by_torch.outputs[0].logprobs, by_onednn.outputs[0].logprobs, strict=True):
            for token_id, lp in a.items():
                assert b[token_id].logprob == pytest.approx(lp.logprob, abs=1e-3)


def test_row_counts_round_up_to_few_shapes() -> None:
    """oneDNN keeps state per input shape: every batch size maps onto ~40 padded ones."""
    from pe_engine.models.cpu_linear import padded_rows

    assert [padded_rows(n) for n in (1, 2, 3, 5, 17, 32)] == [1, 2, 4, 8, 32, 32]
    assert [padded_rows(n) for n in (33, 257, 1025, 2048)] == [48, 320, 1152, 2048]
    assert len({padded_rows(n) for n in range(1, 2049)}) <= 40
    assert all(n <= padded_rows(n) <= n * 5 // 4 for n in range(257, 4097))


@pytest.mark.skipif(not native_bf16(), reason="no native bfloat16 on this CPU: F.linear is kept")
def test_a_bfloat16_model_packs_its_linears_where_the_cpu_has_native_bfloat16(
    tiny_llama_dir: Path,
) -> None:
    """The packed bfloat16 path gives the first token's log-probabilities of the F.linear one
    to bfloat16 precision (token for token equality is not promised: rounding differs)."""
    first = {}
    params = SamplingParams(temperature=0.0, max_tokens=1, logprobs=3)
    for choice in ("torch", "onednn"):
        llm = llm_with_linears(tiny_llama_dir, "bfloat16", choice)
        out = llm.generate({"prompt_token_ids": [17, 905, 33, 4021]}, params, use_tqdm=False)
        first[choice] = out[0].outputs[0].logprobs[0]
    for token_id, lp in first["torch"].items():
        if token_id in first["onednn"]:
            assert first["onednn"][token_id].logprob == pytest.approx(lp.logprob, abs=0.15)
