"""The CUDA engine (Triton backend, decode CUDA graphs, GPU-resident splice) against
transformers on the same GPU: token-for-token greedy equality in float32, and top-1 agreement
on >= 99% of steps in bfloat16, for text, embeds and mixed prompts, graphs on and off.

Run on a machine with an NVIDIA GPU: ``tox -e gpu`` (``pytest -m gpu``). Skipped without CUDA.
"""

from __future__ import annotations

import gc
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from pe_engine import LLM, SamplingParams

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]

NEW_TOKENS = 24
ARCHS = ["tiny_llama_dir", "tiny_llama_tied_dir", "tiny_qwen2_dir", "tiny_qwen3_dir"]


@pytest.fixture(scope="module", params=ARCHS)
def model_dir(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue(request.param))


@pytest.fixture(scope="module", params=[False, True], ids=["graphs", "eager"])
def enforce_eager(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


class CudaOracle:
    """transformers on the GPU: greedy decoding from ``inputs_embeds`` and per-step argmax."""

    def __init__(self, model_dir: Path, dtype: torch.dtype) -> None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        self.model = model.to("cuda").eval()
        self.embed = self.model.get_input_embeddings()

    @torch.no_grad()
    def embeds(self, prompt: Prompt) -> torch.Tensor:
        x = self.embed(torch.tensor(prompt.ids, device="cuda")).clone()
        for pos, row in prompt.rows.items():
            x[pos] = row.to(x)
        return x

    @torch.no_grad()
    def greedy(self, prompt: Prompt, n: int = NEW_TOKENS) -> list[int]:
        out = self.model(inputs_embeds=self.embeds(prompt)[None], use_cache=True)
        tokens: list[int] = []
        for _ in range(n):
            tokens.append(int(out.logits[0, -1].argmax()))
            next_ids = torch.tensor([[tokens[-1]]], device="cuda")
            out = self.model(input_ids=next_ids, past_key_values=out.past_key_values)
        return tokens

    @torch.no_grad()
    def step_argmax(self, prompt: Prompt, generated: list[int]) -> list[int]:
        """The argmax at each generated step given the engine's own earlier tokens."""
        x = torch.cat([self.embeds(prompt), self.embed(torch.tensor(generated, device="cuda"))])
        logits = self.model(inputs_embeds=x[None]).logits[0]
        first = len(prompt.ids) - 1
        return logits[first : first + len(generated)].argmax(-1).tolist()


class Prompt:
    """Token ids with some positions replaced by embedding rows (``rows``: position -> row)."""

    def __init__(self, ids: list[int], rows: dict[int, torch.Tensor] | None = None) -> None:
        self.ids = ids
        self.rows = rows or {}

    def engine_input(self) -> Any:
        if not self.rows:
            return {"prompt_token_ids": self.ids}
        mask = [i not in self.rows for i in range(len(self.ids))]
        embeds = torch.stack([self.rows[p].float().cpu() for p in sorted(self.rows)])
        return {"prompt_token_ids": self.ids, "prompt_embeds": embeds, "is_token_ids": mask}


def _prompts(oracle: CudaOracle) -> list[Prompt]:
    """Text; all-embeds (the model's own rows); mixed; random soft-prompt rows; a shared
    prefix (prefix-cache hits); lengths across block boundaries; long enough to chunk."""
    rng = random.Random(11)
    g = torch.Generator().manual_seed(11)
    hidden = oracle.embed.weight.shape[1]

    def ids(n: int) -> list[int]:
        return [rng.randrange(3, 49000) for _ in range(n)]

    shared = ids(40)
    text = [Prompt(ids(n)) for n in (5, 17, 33, 150)] + [Prompt(shared + ids(9)) for _ in range(3)]
    own = ids(23)
    own_rows = oracle.embeds(Prompt(own)).float().cpu()
    every = Prompt(own, {p: own_rows[p] for p in range(len(own))})
    mixed = Prompt(own, {p: own_rows[p] for p in range(0, len(own), 3)})
    soft_ids = ids(70)
    soft = Prompt(soft_ids, {p: torch.randn(hidden, generator=g) * 0.05 for p in (0, 1, 31, 69)})
    return [*text, every, mixed, soft]


def _engine(model_dir: Path, dtype: str, enforce_eager: bool) -> LLM:
    return LLM(
        str(model_dir), dtype=dtype, device="cuda", enable_prompt_embeds=True,
        enforce_eager=enforce_eager, max_model_len=512, block_size=16, max_num_seqs=8,
        max_num_batched_tokens=64, num_kv_blocks=256,
    )  # fmt: skip


def _generate(llm: LLM, prompts: list[Prompt]) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    inputs = [p.engine_input() for p in prompts]
    return [o.outputs[0].token_ids for o in llm.generate(inputs, params, use_tqdm=False)]


def test_float32_greedy_equals_transformers(model_dir: Path, enforce_eager: bool) -> None:
    oracle = CudaOracle(model_dir, torch.float32)
    prompts = _prompts(oracle)
    llm = _engine(model_dir, "float32", enforce_eager)
    assert (llm.engine.runner.decode_graphs is None) == enforce_eager
    assert _generate(llm, prompts) == [oracle.greedy(p) for p in prompts]


def test_bfloat16_top1_agreement(model_dir: Path, enforce_eager: bool) -> None:
    oracle = CudaOracle(model_dir, torch.bfloat16)
    prompts = _prompts(oracle)
    outputs = _generate(_engine(model_dir, "bfloat16", enforce_eager), prompts)
    steps = matches = 0
    for prompt, tokens in zip(prompts, outputs, strict=True):
        expected = oracle.step_argmax(prompt, tokens)
        steps += len(tokens)
        matches += sum(a == b for a, b in zip(tokens, expected, strict=True))
    assert matches / steps >= 0.99, f"top-1 agreement {matches}/{steps}"


def test_triton_backend_equals_torch_backend_on_cuda(tiny_qwen3_dir: Path) -> None:
    prompts = _prompts(CudaOracle(tiny_qwen3_dir, torch.float32))
    results = []
    for backend in ("torch", "triton"):
        llm = LLM(
            str(tiny_qwen3_dir), dtype="float32", device="cuda", enable_prompt_embeds=True,
            attention_backend=backend, max_model_len=512, num_kv_blocks=256,
            max_num_batched_tokens=64,
        )  # fmt: skip
        results.append(_generate(llm, prompts))
    assert results[0] == results[1]


def test_graph_batches_pad_without_touching_other_sequences(tiny_llama_dir: Path) -> None:
    """Batches of 3, 5, 6 and 7 decodes replay the 4- and 8-row graphs; padded rows write no
    KV, so each sequence's tokens equal its tokens generated alone."""
    llm = _engine(tiny_llama_dir, "float32", enforce_eager=False)
    prompts = [Prompt(list(range(100 + 7 * i, 130 + 9 * i))) for i in range(7)]
    alone = [_generate(llm, [p])[0] for p in prompts]
    for n in (3, 5, 6, 7):
        assert _generate(llm, prompts[:n]) == alone[:n]


def test_kv_pool_fits_gpu_memory_utilization(tiny_llama_dir: Path) -> None:
    """Without kv_cache_memory the pool is sized after a warm-up step: the engine's peak stays
    within its share of the device, and a smaller share gives a smaller pool."""
    total = torch.cuda.mem_get_info()[1]
    sizes = []
    for utilization in (0.3, 0.5):
        llm = LLM(
            str(tiny_llama_dir), dtype="float32", device="cuda", max_model_len=512,
            gpu_memory_utilization=utilization,
        )  # fmt: skip
        runner = llm.engine.runner
        sizes.append(runner.num_kv_blocks)
        torch.cuda.reset_peak_memory_stats()
        _generate(llm, [Prompt(list(range(100, 400)))] * 4)
        used = torch.cuda.max_memory_reserved() / total
        assert used <= utilization + 0.02, f"{used:.3f} of the device"
        del llm, runner
        gc.collect()
        torch.cuda.empty_cache()
    assert 0 < sizes[0] < sizes[1]
