"""quantization="int8" decode steps in one C call per layer (models/int8_layers.py): the same
answer as the layer-by-layer int8 path, several sequences at once, with and without biases."""

from __future__ import annotations

from pathlib import Path

import pytest

from pe_engine import LLM, SamplingParams
from pe_engine.models.fused_ops import FUSED_ROWS
from pe_engine.models.int8_layers import Int8DecodeLayers
from pe_engine.models.int8_linear import int8_kernel_library

pytestmark = pytest.mark.skipif(
    int8_kernel_library() is None, reason="no int8 kernel on this machine"
)

PROMPTS = ["Hi", "The capital of France is", "one two three four five six seven eight nine"]


# 12 sequences: past the fused float32 ops' 8 rows, within KERNEL_ROWS
MANY_PROMPTS = [f"{prompt} {i}" for i in range(4) for prompt in PROMPTS]


def logprobs(llm: LLM, params: SamplingParams, prompts: list[str]) -> list[list[dict[int, float]]]:
    outputs = llm.generate(prompts, params)
    return [
        [{t: lp.logprob for t, lp in step.items()} for step in out.outputs[0].logprobs]
        for out in outputs
    ]


@pytest.mark.parametrize(
    ("fixture", "build", "prompts"),
    [
        ("tiny_llama_dir", "native", PROMPTS),
        ("tiny_llama_dir", "avx2", PROMPTS),
        ("tiny_qwen2_dir", "native", PROMPTS),  # qwen2: qkv bias
        ("tiny_qwen2_dir", "avx2", PROMPTS),
        ("tiny_llama_dir", "native", MANY_PROMPTS),
    ],
)
def test_the_c_layer_walk_answers_as_the_layer_by_layer_path(
    fixture: str, build: str, prompts: list[str], request: pytest.FixtureRequest
) -> None:
    """The walk multiplies every decode row on the int8 kernel, as the layer-by-layer path
    does up to KERNEL_ROWS rows: equal to the last bit, the same kernels in the same order (past
    FUSED_ROWS rows the layer-by-layer path's norms and RoPE are torch's: equal to float
    rounding). Both builds of the kernel: this CPU's, and the AVX2 one CPUs without
    AVX512-VNNI get."""
    if build == "avx2":
        request.getfixturevalue("avx2_int8")
    model_dir = request.getfixturevalue(fixture)
    llm = LLM(str(model_dir), dtype="float32", quantization="int8", max_model_len=128,
              num_kv_blocks=64, block_size=8, enable_prefix_caching=False)  # fmt: skip
    model = llm.engine.runner.model
    walk = model.int8_layers
    assert isinstance(walk, Int8DecodeLayers)
    calls: list[int] = []
    real_run = walk.run
    walk.run = lambda residual, *a: calls.append(residual.shape[0]) or real_run(residual, *a)  # type: ignore[method-assign]
    params = SamplingParams(max_tokens=10, temperature=0, logprobs=3, ignore_eos=True)
    fused = logprobs(llm, params, prompts)
    assert calls and max(calls) == len(prompts)  # all sequences decoded together
    model.int8_layers = None
    reference = logprobs(llm, params, prompts)
    exact = len(prompts) <= FUSED_ROWS
    for got_steps, want_steps in zip(fused, reference, strict=True):
        for got, want in zip(got_steps, want_steps, strict=True):
            assert got.keys() == want.keys()
            for token, value in want.items():
                assert got[token] == (value if exact else pytest.approx(value, abs=1e-5))


def test_models_it_cannot_run_keep_the_layer_by_layer_path(
    tiny_qwen3_dir: Path, tiny_llama_dir: Path
) -> None:
    """q/k norms (Qwen3), or float32 weights: no walk."""
    qwen3 = LLM(str(tiny_qwen3_dir), dtype="float32", quantization="int8", max_model_len=64,
                num_kv_blocks=16)  # fmt: skip
    assert qwen3.engine.runner.model.int8_layers is None
    plain = LLM(str(tiny_llama_dir), dtype="float32", max_model_len=64, num_kv_blocks=16)
    assert plain.engine.runner.model.int8_layers is None
