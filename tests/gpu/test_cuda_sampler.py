"""The sampler on the GPU: the exponential-race noise is drawn there (engine stream and
per-request generators alike, no host copy), seeded rows do not depend on the batch, and the
race still samples the filtered distribution.

Run on a machine with an NVIDIA GPU: ``tox -e gpu`` (``pytest -m gpu``). Skipped without CUDA.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pe_engine import LLM, SamplingParams
from pe_engine.core.sequence import Sequence
from pe_engine.models.sampler import Sampler
from pe_engine.prompt import Prompt

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]

VOCAB = 64
CUDA = torch.device("cuda")


def make_seq(params: SamplingParams) -> Sequence:
    return Sequence.from_prompt("r", Prompt([5, 6, 7]), params)


def random_logits(rows: int, seed: int) -> torch.Tensor:
    return (torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3).to(CUDA)


def test_noise_is_drawn_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    draws: list[str] = []
    exponential = torch.Tensor.exponential_

    def recording(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        draws.append(self.device.type)
        return exponential(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "exponential_", recording)
    sampler = Sampler({2}, seed=0, device=CUDA)
    seqs = [
        make_seq(SamplingParams(seed=3)),
        make_seq(SamplingParams()),
        make_seq(SamplingParams()),
    ]
    results = sampler(random_logits(3, seed=1), seqs)
    assert len(results) == 3 and draws and set(draws) == {"cuda"}
    assert sampler.generator.device.type == "cuda"
    generator = seqs[0].generator(CUDA)
    assert generator is not None and generator.device.type == "cuda"


def test_seeded_rows_do_not_depend_on_the_batch() -> None:
    params = SamplingParams(temperature=1.0, seed=42, top_p=0.9, top_k=40)

    def run(batch_size: int, position: int, steps: int = 6) -> list[int]:
        sampler = Sampler({2}, seed=0, device=CUDA)
        seqs = [make_seq(SamplingParams(temperature=0.8, seed=i)) for i in range(batch_size)]
        seqs[position] = make_seq(params)
        seqs.append(make_seq(SamplingParams()))  # an unseeded row from the engine stream
        tokens = []
        for step in range(steps):
            logits = random_logits(1, seed=100 + step).expand(len(seqs), -1)
            tokens.append(sampler(logits, seqs)[position].token_id)
        return tokens

    alone = run(1, 0)
    assert run(5, 3) == alone and run(3, 0) == alone
    assert len(set(alone)) > 1  # it really samples


def test_race_samples_the_filtered_distribution() -> None:
    """Probabilities 0.5, 0.3, 0.15, 0.05 on tokens 10..13; top_p=0.9 keeps the first three."""
    num = 20000
    logits = torch.full((1, VOCAB), float("-inf"))
    logits[0, 10:14] = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    sampler = Sampler({2}, seed=0, device=CUDA)
    seqs = [make_seq(SamplingParams(top_p=0.9)) for _ in range(num)]
    tokens = torch.tensor([r.token_id for r in sampler(logits.to(CUDA).expand(num, -1), seqs)])
    counts = torch.bincount(tokens, minlength=VOCAB)[10:14].double() / num
    expected = torch.tensor([0.5, 0.3, 0.15, 0.0], dtype=torch.double) / 0.95
    torch.testing.assert_close(counts, expected, atol=0.02, rtol=0)


def test_seeded_engine_requests_repeat_alone_and_batched(tiny_llama_dir: Path) -> None:
    llm = LLM(str(tiny_llama_dir), dtype="float32", device="cuda", num_kv_blocks=64)
    seeded = SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True)
    other = SamplingParams(temperature=1.0, max_tokens=12, ignore_eos=True)
    alone = llm.generate("a seeded prompt", seeded, use_tqdm=False)[0].outputs[0].token_ids
    batch = llm.generate(["other text", "a seeded prompt"], [other, seeded], use_tqdm=False)
    assert batch[1].outputs[0].token_ids == alone
