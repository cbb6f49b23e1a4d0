"""Sampler: greedy, seeds, masks, penalties, min_tokens and logprobs on synthetic logits."""

from __future__ import annotations

import math

import pytest
import torch

from pe_engine.core.sequence import Sequence
from pe_engine.models.sampler import Sampler
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams

pytestmark = pytest.mark.usefixtures("torch_single_thread")

VOCAB = 64
EOS = 2


@pytest.fixture
def sampler() -> Sampler:
    return Sampler({EOS}, seed=0, device=torch.device("cpu"))


def make_seq(
    params: SamplingParams, prompt: Prompt | None = None, output: list[int] = ()
) -> Sequence:
    seq = Sequence.from_prompt("r", prompt or Prompt([5, 6, 7]), params)
    for token_id in output:
        seq.append_token(token_id)
    return seq


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def skewed_logits() -> torch.Tensor:
    """Probabilities 0.5, 0.3, 0.15, 0.05 on tokens 10..13, nothing elsewhere."""
    logits = torch.full((1, VOCAB), float("-inf"))
    logits[0, 10:14] = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    return logits


def sample_many(sampler: Sampler, logits: torch.Tensor, num: int, **params: float) -> set[int]:
    seqs = [make_seq(SamplingParams(seed=s, **params)) for s in range(num)]
    return {r.token_id for r in sampler(logits.expand(num, -1), seqs)}


def test_greedy_is_argmax(sampler: Sampler) -> None:
    logits = random_logits(4)
    results = sampler(logits, [make_seq(SamplingParams(temperature=0.0)) for _ in range(4)])
    assert [r.token_id for r in results] == logits.argmax(-1).tolist()


def test_seeded_rows_do_not_depend_on_the_batch(sampler: Sampler) -> None:
    params = SamplingParams(temperature=1.0, seed=42, top_p=0.9, top_k=40)

    def run(batch_size: int, position: int, steps: int = 6) -> list[int]:
        seqs = [make_seq(SamplingParams(temperature=0.8, seed=i)) for i in range(batch_size)]
        seqs[position] = make_seq(params)
        tokens = []
        for step in range(steps):
            results = sampler(random_logits(batch_size, seed=100 + step)[[0] * batch_size], seqs)
            tokens.append(results[position].token_id)
        return tokens

    alone = run(1, 0)
    assert run(5, 3) == alone
    assert run(3, 0) == alone
    assert len(set(alone)) > 1  # it really samples


def test_cpu_tokens_are_those_of_the_host_noise_sampler(sampler: Sampler) -> None:
    """Pinned: these came from the sampler that drew all noise on the host and copied it; the
    device-side draw keeps them on CPU (seeded branches and the engine-wide stream alike)."""
    seqs = [
        make_seq(SamplingParams(seed=42, top_p=0.9)),
        make_seq(SamplingParams(temperature=0.7)),
        Sequence.from_prompt(
            "r", Prompt([5, 6, 7]), SamplingParams(seed=7, n=2, temperature=0.7), branch=1
        ),
    ]
    steps = [[r.token_id for r in sampler(random_logits(3, seed=100 + i), seqs)] for i in range(6)]
    assert [list(row) for row in zip(*steps, strict=True)] == [
        [31, 48, 1, 62, 54, 4],
        [61, 22, 55, 31, 17, 19],
        [46, 16, 54, 2, 3, 53],
    ]
    fresh = Sampler({EOS}, seed=0, device=torch.device("cpu"))
    unseeded = [make_seq(SamplingParams(top_k=20)) for _ in range(2)]  # one draw for the batch
    steps = [[r.token_id for r in fresh(random_logits(2, 200 + i), unseeded)] for i in range(4)]
    assert [list(row) for row in zip(*steps, strict=True)] == [[62, 22, 52, 29], [63, 32, 41, 25]]


def test_unseeded_rows_vary_and_seeds_differ(sampler: Sampler) -> None:
    logits = torch.zeros(1, VOCAB)
    unseeded = {sampler(logits, [make_seq(SamplingParams())])[0].token_id for _ in range(20)}
    assert len(unseeded) > 1
    assert len(sample_many(sampler, logits, 30)) > 1


def test_top_k_keeps_only_the_k_best(sampler: Sampler) -> None:
    logits = random_logits(1, seed=3)
    allowed = set(logits[0].topk(3).indices.tolist())
    assert sample_many(sampler, logits, 60, top_k=3) == allowed
    assert sample_many(sampler, logits, 10, top_k=1) == {int(logits.argmax())}


def test_top_p_keeps_the_smallest_nucleus(sampler: Sampler) -> None:
    assert sample_many(sampler, skewed_logits(), 60, top_p=0.75) == {10, 11}
    assert sample_many(sampler, skewed_logits(), 80, top_p=0.9) == {10, 11, 12}
    assert sample_many(sampler, skewed_logits(), 10, top_p=0.3) == {10}


def test_min_p_drops_tokens_below_the_scaled_max(sampler: Sampler) -> None:
    assert sample_many(sampler, skewed_logits(), 60, min_p=0.55) == {10, 11}
    assert sample_many(sampler, skewed_logits(), 100, min_p=0.2) == {10, 11, 12}


def test_logprobs_are_raw_log_softmax_with_ranks(sampler: Sampler) -> None:
    logits = random_logits(2, seed=5)
    params = SamplingParams(temperature=0.5, presence_penalty=1.5, logprobs=3, seed=1)
    results = sampler(logits, [make_seq(params, output=[1, 9]), make_seq(SamplingParams())])
    raw = torch.log_softmax(logits, dim=-1)
    first = results[0]
    assert first.logprob == pytest.approx(raw[0, first.token_id].item(), abs=1e-5)
    values, ids = raw[0].topk(3)
    assert [t for t, _ in first.top_logprobs] == ids.tolist()
    assert [lp for _, lp in first.top_logprobs] == pytest.approx(values.tolist(), abs=1e-5)
    assert first.rank == int((raw[0] > raw[0, first.token_id]).sum()) + 1
    assert results[1].top_logprobs is None and results[1].rank is None
    assert results[1].logprob is None  # neither reported nor ranked by: not computed


def test_logprobs_zero_gives_rank_without_top_list(sampler: Sampler) -> None:
    (result,) = sampler(random_logits(1), [make_seq(SamplingParams(logprobs=0, seed=0))])
    assert result.top_logprobs == [] and result.rank >= 1


def reference_penalties(
    logits: torch.Tensor, prompt_ids: list[int], output_ids: list[int], params: SamplingParams
) -> torch.Tensor:
    """vLLM's definition, written out token by token."""
    out = logits.clone()
    for t in set(prompt_ids) | set(output_ids):
        r = params.repetition_penalty
        out[t] = out[t] / r if out[t] > 0 else out[t] * r
    for t in set(output_ids):
        count = output_ids.count(t)
        out[t] -= params.frequency_penalty * count + params.presence_penalty
    return out


def test_penalties_match_reference_over_real_ids_only(sampler: Sampler) -> None:
    # Mixed prompt: placeholder id 0 at the embed positions; real ids 5, 6, 5, 40.
    prompt = Prompt(
        token_ids=[5, 0, 0, 6, 5, 0, 40],
        prompt_embeds=torch.zeros(3, 8),
        is_token_ids=[True, False, False, True, True, False, True],
    )
    params = SamplingParams(repetition_penalty=1.7, frequency_penalty=0.4, presence_penalty=0.9)
    plain = SamplingParams()
    seqs = [make_seq(plain), make_seq(params, prompt, output=[6, 33, 33, 7]), make_seq(plain)]
    logits = random_logits(3, seed=7)
    processed = sampler.process_logits(logits, seqs)
    expected = reference_penalties(logits[1], [5, 6, 5, 40], [6, 33, 33, 7], params)
    torch.testing.assert_close(processed[1], expected)
    assert processed[1, 0] == logits[1, 0]  # the placeholder id is never penalised
    torch.testing.assert_close(processed[[0, 2]], logits[[0, 2]])


def test_pure_embeds_penalised_row_beside_long_text_rows(sampler: Sampler) -> None:
    """vLLM #57719: an empty real-id prompt in a penalised batch of long prompts."""
    embeds_prompt = Prompt([0] * 4, torch.zeros(4, 8), [False] * 4)
    params = SamplingParams(repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5)
    seqs = [
        make_seq(params, embeds_prompt),
        make_seq(params, Prompt(list(range(3, 60)))),
        make_seq(params, embeds_prompt, output=[11]),
    ]
    logits = random_logits(3, seed=8)
    processed = sampler.process_logits(logits, seqs)
    torch.testing.assert_close(processed[0], logits[0])
    torch.testing.assert_close(
        processed[1], reference_penalties(logits[1], list(range(3, 60)), [], params)
    )
    torch.testing.assert_close(processed[2], reference_penalties(logits[2], [], [11], params))
    assert len(sampler(logits, seqs)) == 3


def test_min_tokens_masks_eos_and_stop_ids_until_reached(sampler: Sampler) -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, EOS], logits[0, 20], logits[0, 30] = 10.0, 9.0, 8.0
    params = SamplingParams(temperature=0.0, min_tokens=2, stop_token_ids=[20])
    early, done = make_seq(params, output=[7]), make_seq(params, output=[7, 8])
    assert sampler(logits, [early])[0].token_id == 30
    assert sampler(logits, [done])[0].token_id == EOS
    ignore = SamplingParams(temperature=0.0, min_tokens=2, ignore_eos=True)
    assert sampler(logits, [make_seq(ignore)])[0].token_id == EOS  # EOS is not a stop token


def test_min_tokens_masks_every_id_of_the_eos_set() -> None:
    sampler = Sampler({EOS, 40, 50}, seed=0, device=torch.device("cpu"))
    logits = torch.zeros(1, VOCAB)
    logits[0, [EOS, 40, 50, 30]] = torch.tensor([10.0, 9.5, 9.0, 8.0])
    params = SamplingParams(temperature=0.0, min_tokens=1)
    assert sampler(logits, [make_seq(params)])[0].token_id == 30
    ignore = SamplingParams(temperature=0.0, min_tokens=1, ignore_eos=True)
    assert sampler(logits, [make_seq(ignore)])[0].token_id == EOS


def test_temperature_flattens_the_distribution(sampler: Sampler) -> None:
    logits = torch.zeros(1, VOCAB)
    logits[0, 1] = 5.0
    cold = sample_many(sampler, logits, 40, temperature=0.05)
    hot = sample_many(sampler, logits, 40, temperature=50.0)
    assert cold == {1}
    assert len(hot) > 10
    hot_params = SamplingParams(temperature=50.0, logprobs=0)
    logprob = sampler(logits, [make_seq(hot_params)])[0].logprob
    assert logprob is not None and math.isfinite(logprob)
