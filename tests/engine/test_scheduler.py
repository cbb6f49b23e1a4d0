"""Scheduler + BlockManager under pressure, against a stand-in runner that reads its KV pool.

``KVPoolRunner`` plays the model: the "KV" of a position is a hash chained from the KV of the
previous position, read back *through the block table*, so a wrong block, a stale cached block
or a lost chunk changes the sampled tokens. Any schedule (chunking, preemption, prefix caching,
aborts) must give exactly the tokens of a straight left-to-right computation.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pe_engine.core.block_manager import BlockManager
from pe_engine.core.scheduler import Scheduler
from pe_engine.core.sequence import Sequence, SequenceStatus
from pe_engine.prompt import Prompt
from pe_engine.sampling_params import SamplingParams

H = 4
VOCAB = 997
EOS = 2


@dataclass
class FakeSample:
    token_id: int
    logprob: float = 0.0
    top_logprobs: list[tuple[int, float]] | None = None


def position_key(seq: Sequence, pos: int) -> bytes:
    if pos < seq.num_prompt_tokens and seq.is_token_ids is not None and not seq.is_token_ids[pos]:
        offsets, rows = seq.embeds_in_range(pos, pos + 1)
        assert offsets == [0] and rows is not None
        return b"e" + rows.numpy().tobytes()
    return b"t" + seq.token_ids[pos].to_bytes(4, "little")


def chain(prev: bytes, key: bytes) -> bytes:
    return hashlib.sha256(prev + key).digest()


def sample_from(state: bytes) -> int:
    return 3 + int.from_bytes(state[:4], "little") % (VOCAB - 3)


class KVPoolRunner:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.num_kv_blocks = num_blocks
        self.kv: dict[int, bytes] = {}
        self.num_calls = 0

    def slot(self, seq: Sequence, pos: int) -> int:
        return seq.block_table[pos // self.block_size] * self.block_size + pos % self.block_size

    def execute(self, scheduled: list[tuple[Sequence, int]]) -> list[FakeSample | None]:
        self.num_calls += 1
        results: list[FakeSample | None] = []
        for seq, n in scheduled:
            start = seq.num_computed_tokens
            assert n >= 1 and start + n <= seq.num_tokens
            assert len(seq.block_table) * self.block_size >= start + n
            for pos in range(start, start + n):
                prev = self.kv[self.slot(seq, pos - 1)] if pos else b""
                self.kv[self.slot(seq, pos)] = chain(prev, position_key(seq, pos))
            done = start + n == seq.num_tokens
            results.append(
                FakeSample(sample_from(self.kv[self.slot(seq, start + n - 1)])) if done else None
            )
        return results


def reference_tokens(seq: Sequence, max_tokens: int) -> list[int]:
    """What a one-request, no-cache, left-to-right run produces."""
    state = b""
    for pos in range(seq.num_prompt_tokens):
        state = chain(state, position_key(seq, pos))
    out = []
    for _ in range(max_tokens):
        token = sample_from(state)
        out.append(token)
        state = chain(state, b"t" + token.to_bytes(4, "little"))
    return out


def make_prompt(ids: list[int], embeds_at: set[int] | None = None, seed: int = 0) -> Prompt:
    if not embeds_at:
        return Prompt(token_ids=ids, prompt_embeds=None, is_token_ids=None)
    g = torch.Generator().manual_seed(seed)
    mask = [i not in embeds_at for i in range(len(ids))]
    rows = torch.randn(len(embeds_at), H, generator=g)
    ids = [t if m else 0 for t, m in zip(ids, mask, strict=True)]
    return Prompt(token_ids=ids, prompt_embeds=rows, is_token_ids=mask)


def make_seqs(request_id: str, prompt: Prompt, params: SamplingParams) -> list[Sequence]:
    return [Sequence.from_prompt(request_id, prompt, params, branch=i) for i in range(params.n)]


def make_scheduler(
    num_blocks: int, block_size: int = 4, budget: int = 64, max_seqs: int = 16, caching: bool = True
) -> tuple[Scheduler, KVPoolRunner]:
    bm = BlockManager(num_blocks, block_size, enable_prefix_caching=caching)
    scheduler = Scheduler(
        bm, max_num_seqs=max_seqs, max_num_batched_tokens=budget, max_model_len=4096,
        eos_token_ids=[EOS],
    )  # fmt: skip
    return scheduler, KVPoolRunner(num_blocks, block_size)


def run(scheduler: Scheduler, runner: KVPoolRunner, max_steps: int = 10_000) -> int:
    steps = 0
    while scheduler.has_unfinished_seqs():
        scheduled = scheduler.schedule()
        budget = scheduler.max_num_batched_tokens
        assert sum(n for _, n in scheduled) <= budget
        assert len({s.seq_id for s, _ in scheduled}) == len(scheduled)
        scheduler.postprocess(scheduled, runner.execute(scheduled) if scheduled else [])
        steps += 1
        assert steps < max_steps
    return steps


def greedy(max_tokens: int, **kw: object) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


def test_chunked_prefill_splits_a_long_prompt_and_runs_decodes_first() -> None:
    scheduler, runner = make_scheduler(num_blocks=64, budget=8)
    short = make_seqs("a", make_prompt([5, 6, 7]), greedy(6))
    scheduler.add_seqs(short)
    first = scheduler.schedule()
    scheduler.postprocess(first, runner.execute(first))
    long_seq = make_seqs("b", make_prompt(list(range(10, 30))), greedy(3))
    scheduler.add_seqs(long_seq)
    scheduled = scheduler.schedule()
    assert [(s.request_id, n) for s, n in scheduled] == [("a", 1), ("b", 7)]
    run_remaining(scheduler, runner, scheduled)
    for seqs, n in ((short, 6), (long_seq, 3)):
        assert seqs[0].output_token_ids == reference_tokens(seqs[0], n)


def run_remaining(scheduler: Scheduler, runner: KVPoolRunner, scheduled: list) -> None:
    scheduler.postprocess(scheduled, runner.execute(scheduled))
    run(scheduler, runner)


def test_max_num_seqs_and_token_budget_are_respected() -> None:
    scheduler, runner = make_scheduler(num_blocks=256, budget=16, max_seqs=3)
    for i in range(8):
        scheduler.add_seqs(make_seqs(str(i), make_prompt([7 + i] * 5), greedy(4)))
    while scheduler.has_unfinished_seqs():
        scheduled = scheduler.schedule()
        assert len(scheduler.running) <= 3 and sum(n for _, n in scheduled) <= 16
        scheduler.postprocess(scheduled, runner.execute(scheduled))
    assert scheduler.block_manager.num_free_blocks == 256


def test_preemption_recomputes_exactly_and_frees_everything() -> None:
    scheduler, runner = make_scheduler(num_blocks=12, block_size=4, budget=32)
    seqs = []
    for i in range(6):
        prompt = make_prompt([10 + i] * 9, embeds_at={1, 2, 8} if i % 2 else None, seed=i)
        seqs += make_seqs(str(i), prompt, greedy(12))
    for seq in seqs:
        scheduler.add_seqs([seq])
    run(scheduler, runner)
    assert scheduler.num_preemptions > 0
    for seq in seqs:
        assert seq.status == SequenceStatus.FINISHED_LENGTH
        assert seq.output_token_ids == reference_tokens(seq, 12)
    assert scheduler.block_manager.num_free_blocks == 12


def test_prefix_cache_hits_repeated_embeds_but_not_different_embeds() -> None:
    scheduler, runner = make_scheduler(num_blocks=64, block_size=4)
    bm = scheduler.block_manager
    base = list(range(20, 33))
    first = make_seqs("a", make_prompt(base, embeds_at={0, 1, 2, 3, 4}, seed=1), greedy(2))
    scheduler.add_seqs(first)
    run(scheduler, runner)
    assert bm.prefix_cache_hits == 0
    same = make_seqs("b", make_prompt(base, embeds_at={0, 1, 2, 3, 4}, seed=1), greedy(2))
    scheduler.add_seqs(same)
    run(scheduler, runner)
    assert bm.prefix_cache_hits == 12  # three full blocks; the last token is always computed
    assert same[0].num_cached_tokens == 12
    assert same[0].output_token_ids == first[0].output_token_ids
    other = make_seqs("c", make_prompt(base, embeds_at={0, 1, 2, 3, 4}, seed=2), greedy(2))
    scheduler.add_seqs(other)
    run(scheduler, runner)
    assert bm.prefix_cache_hits == 12 and other[0].num_cached_tokens == 0
    assert other[0].output_token_ids == reference_tokens(other[0], 2)
    assert bm.num_free_blocks == 64


def test_prefix_cache_lru_reuse_keeps_results_exact() -> None:
    scheduler, runner = make_scheduler(num_blocks=10, block_size=4)
    prompts = [make_prompt([40 + i] * 11 + [i]) for i in range(4)]
    for round_ in range(2):
        for i, prompt in enumerate(prompts):
            seqs = make_seqs(f"{round_}-{i}", prompt, greedy(5))
            scheduler.add_seqs(seqs)
            run(scheduler, runner)
            assert seqs[0].output_token_ids == reference_tokens(seqs[0], 5)
    assert scheduler.block_manager.num_free_blocks == 10


def test_parallel_branches_share_prompt_blocks() -> None:
    scheduler, runner = make_scheduler(num_blocks=64, block_size=4, caching=False)
    bm = scheduler.block_manager
    seqs = make_seqs("n", make_prompt(list(range(50, 67))), greedy(3, n=4))
    scheduler.add_seqs(seqs)
    peak = 0
    while scheduler.has_unfinished_seqs():
        scheduled = scheduler.schedule()
        scheduler.postprocess(scheduled, runner.execute(scheduled))
        peak = max(peak, 64 - bm.num_free_blocks)
    prompt_blocks = -(-17 // 4)
    assert peak < 4 * prompt_blocks
    for seq in seqs:
        assert seq.output_token_ids == reference_tokens(seq, 3)
    assert bm.num_free_blocks == 64


def test_abort_anywhere_frees_every_block() -> None:
    scheduler, runner = make_scheduler(num_blocks=20, block_size=4, budget=8)
    groups = [make_seqs(str(i), make_prompt([60 + i] * 13), greedy(20, n=2)) for i in range(5)]
    for seqs in groups:
        scheduler.add_seqs(seqs)
    for _ in range(6):
        scheduled = scheduler.schedule()
        scheduler.postprocess(scheduled, runner.execute(scheduled))
    for seqs in groups:  # running, waiting, preempted and not-yet-forked branches alike
        for seq in seqs:
            if not seq.is_finished:
                scheduler.finish(seq, SequenceStatus.FINISHED_ABORTED)
    assert not scheduler.has_unfinished_seqs()
    assert scheduler.block_manager.num_free_blocks == 20


def test_a_sequence_larger_than_the_pool_finishes_with_length() -> None:
    scheduler, runner = make_scheduler(num_blocks=3, block_size=4)
    seqs = make_seqs("big", make_prompt([9] * 6), greedy(50))
    scheduler.add_seqs(seqs)
    run(scheduler, runner)
    assert seqs[0].status == SequenceStatus.FINISHED_LENGTH
    assert seqs[0].num_tokens == 13 and scheduler.block_manager.num_free_blocks == 3


def test_stop_conditions() -> None:
    scheduler, runner = make_scheduler(num_blocks=64)
    prompt = make_prompt([3, 4, 5])
    expected = reference_tokens(make_seqs("x", prompt, greedy(8))[0], 8)
    cases = {
        "stop_token": SamplingParams(temperature=0.0, max_tokens=8, stop_token_ids=[expected[2]]),
        "min_tokens": SamplingParams(
            temperature=0.0, max_tokens=8, min_tokens=5, stop_token_ids=[expected[2]]
        ),
        "length": SamplingParams(temperature=0.0, max_tokens=4),
    }
    seqs = {name: make_seqs(name, prompt, p)[0] for name, p in cases.items()}
    for seq in seqs.values():
        scheduler.add_seqs([seq])
    run(scheduler, runner)
    assert seqs["stop_token"].output_token_ids == expected[:3]
    assert scheduler.stop_reasons[seqs["stop_token"].seq_id] == expected[2]
    assert seqs["min_tokens"].output_token_ids == expected[:8]
    assert seqs["length"].status == SequenceStatus.FINISHED_LENGTH
    assert scheduler.finish_reason(seqs["stop_token"]) == "stop"
    assert scheduler.finish_reason(seqs["length"]) == "length"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    num_blocks=st.integers(6, 40),
    budget=st.integers(4, 48),
    caching=st.booleans(),
)
def test_random_schedules_never_leak_and_never_change_outputs(
    seed: int, num_blocks: int, budget: int, caching: bool
) -> None:
    rng = random.Random(seed)
    scheduler, runner = make_scheduler(num_blocks, block_size=4, budget=budget, max_seqs=6,
                                       caching=caching)  # fmt: skip
    shared = [rng.randrange(3, VOCAB) for _ in range(8)]
    pending = []
    for i in range(rng.randint(1, 10)):
        length = rng.randint(1, 18)
        ids = (shared if rng.random() < 0.5 else []) + [
            rng.randrange(3, VOCAB) for _ in range(length)
        ]
        ids = ids[: max(1, min(len(ids), 4 * num_blocks - 16))]
        embeds = {p for p in range(len(ids)) if rng.random() < 0.3}
        params = greedy(rng.randint(1, 12), n=rng.choice([1, 1, 2]))
        pending.append(
            (rng.randint(0, 8), make_seqs(str(i), make_prompt(ids, embeds, seed=i % 3), params))
        )
    aborted: set[int] = set()
    all_seqs = [s for _, seqs in pending for s in seqs]
    step = 0
    while pending or scheduler.has_unfinished_seqs():
        for item in [p for p in pending if p[0] <= step]:
            scheduler.add_seqs(item[1])
            pending.remove(item)
        if rng.random() < 0.05:
            victims = [s for s in all_seqs if not s.is_finished and s.seq_id not in aborted]
            if victims:
                victim = rng.choice(victims)
                aborted.add(victim.seq_id)
                scheduler.finish(victim, SequenceStatus.FINISHED_ABORTED)
        scheduled = scheduler.schedule()
        scheduler.postprocess(scheduled, runner.execute(scheduled) if scheduled else [])
        step += 1
        assert step < 5000
    assert scheduler.block_manager.num_free_blocks == num_blocks
    for seq in all_seqs:
        if seq.status == SequenceStatus.FINISHED_ABORTED:
            continue
        max_tokens = seq.sampling_params.max_tokens
        out = seq.output_token_ids
        assert out == reference_tokens(seq, len(out))
        if seq.status == SequenceStatus.FINISHED_LENGTH and seq.num_tokens < 4 * num_blocks:
            assert len(out) == max_tokens


@pytest.mark.parametrize("caching", [True, False])
def test_many_requests_join_and_leave(caching: bool) -> None:
    scheduler, runner = make_scheduler(num_blocks=24, block_size=4, budget=20, max_seqs=5,
                                       caching=caching)  # fmt: skip
    seqs = []
    for i in range(16):
        seq = make_seqs(
            str(i),
            make_prompt([100 + i % 4] * (3 + i % 7), embeds_at={0} if i % 3 else None),
            greedy(2 + i % 9),
        )[0]
        seqs.append(seq)
        scheduler.add_seqs([seq])
        scheduled = scheduler.schedule()
        scheduler.postprocess(scheduled, runner.execute(scheduled))
    run(scheduler, runner)
    for i, seq in enumerate(seqs):
        assert seq.output_token_ids == reference_tokens(seq, 2 + i % 9)
    assert scheduler.block_manager.num_free_blocks == 24
