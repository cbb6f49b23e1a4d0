"""quantization="int8" decode steps in one C call per layer (models/int8_layers.py): the same
answer as the layer-by-layer int8 path, several sequences at once, with and without biases."""

from __future__ import annotations

from pathlib import Path

import pytest

from pe_engine import LLM, SamplingParams
from pe_engine.models import int8_linear
from pe_engine.models.fused_ops import FUSED_ROWS
from pe_engine.models.int8_layers import Int8DecodeLayers
from pe_engine.models.int8_linear import int8_kernel_library

pytestmark = pytest.mark.skipif(
    int8_kernel_library() is None, reason="no int8 kernel on this machine"
)

PROMPTS = ["Hi", "The capital of France is", "one two three four five six seven eight nine"]


def logprobs(llm: LLM, params: SamplingParams) -> list[list[dict[int, float]]]:
    outputs = llm.generate(PROMPTS, params)
    return [
        [{t: lp.logprob for t, lp in step.items()} for step in out.outputs[0].logprobs]
        for out in outputs
    ]


@pytest.mark.parametrize("build", ["native", "avx2"])
@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])  # qwen2: qkv bias
def test_the_c_layer_walk_answers_as_the_layer_by_layer_path(
    fixture: str, build: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk multiplies every decode row on the int8 kernel; so do both runs here for all
    steps of up to FUSED_ROWS rows (layer by layer, the kernel takes up to KERNEL_ROWS rows and
    dequantizes past that). Equal to the last bit: the same kernels in the same order. Both
    builds of the kernel: this CPU's, and the AVX2 one CPUs without AVX512-VNNI get."""
    if build == "avx2":
        request.getfixturevalue("avx2_int8")
    monkeypatch.setattr(int8_linear, "KERNEL_ROWS", FUSED_ROWS)
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
    fused = logprobs(llm, params)
    assert calls and max(calls) == len(PROMPTS)  # the three sequences decoded together
    model.int8_layers = None
    reference = logprobs(llm, params)
    for got_steps, want_steps in zip(fused, reference, strict=True):
        for got, want in zip(got_steps, want_steps, strict=True):
            assert got.keys() == want.keys()
            for token, value in want.items():
                assert got[token] == value


def test_models_it_cannot_run_keep_the_layer_by_layer_path(
    tiny_qwen3_dir: Path, tiny_llama_dir: Path
) -> None:
    """q/k norms (Qwen3), or float32 weights: no walk."""
    qwen3 = LLM(str(tiny_qwen3_dir), dtype="float32", quantization="int8", max_model_len=64,
                num_kv_blocks=16)  # fmt: skip
    assert qwen3.engine.runner.model.int8_layers is None
    plain = LLM(str(tiny_llama_dir), dtype="float32", max_model_len=64, num_kv_blocks=16)
    assert plain.engine.runner.model.int8_layers is None
