"""Continuous batching with chunked prefill, preemption by recompute, and stop checks."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, MutableSequence
from typing import TYPE_CHECKING, Any

from pe_engine.core.block_manager import BlockManager
from pe_engine.core.detokenizer import IncrementalDetokenizer
from pe_engine.core.sequence import Sequence, SequenceStatus

if TYPE_CHECKING:
    from pe_engine.models.runner import SampleResult

FINISH_REASONS = {
    SequenceStatus.FINISHED_STOPPED: "stop",
    SequenceStatus.FINISHED_LENGTH: "length",
    SequenceStatus.FINISHED_ABORTED: "abort",
}
_DETOKENIZER_CONTEXT = 7


class Scheduler:
    """Decides which sequences run each step and how many of their tokens.

    Running sequences come first (decodes, then prefill chunks), in arrival order; waiting ones
    fill the rest of the token budget. When blocks run out, the latest arrival is preempted:
    its blocks are freed and it re-queues at the front, keeping its tokens and embeds rows.
    Branches of an ``n > 1`` request start once the first branch has computed the prompt and
    share its full prompt blocks.
    """

    def __init__(
        self,
        block_manager: BlockManager,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        eos_token_ids: Iterable[int] = (),
        tokenizer: Any = None,
    ) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.tokenizer = tokenizer
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # sorted by arrival
        self.detokenizers: dict[int, IncrementalDetokenizer] = {}
        self.stop_reasons: dict[int, int | str | None] = {}
        self.num_preemptions = 0
        self._finished: list[Sequence] = []
        self._arrival: dict[int, tuple[int, int]] = {}
        self._pending_branches: dict[int, list[Sequence]] = {}
        self._num_arrivals = 0

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + sum(len(b) for b in self._pending_branches.values())

    @property
    def num_running(self) -> int:
        return len(self.running)

    def has_unfinished_seqs(self) -> bool:
        return bool(self.waiting or self.running or self._pending_branches)

    def add_seqs(self, seqs: list[Sequence]) -> None:
        """Queue one request's sequences; branches after the first wait for its prompt."""
        self._num_arrivals += 1
        for branch, seq in enumerate(seqs):
            self._arrival[seq.seq_id] = (self._num_arrivals, branch)
            self.detokenizers[seq.seq_id] = self._make_detokenizer(seq)
            self.stop_reasons[seq.seq_id] = None
        self.waiting.append(seqs[0])
        if len(seqs) > 1:
            self._pending_branches[seqs[0].seq_id] = list(seqs[1:])

    def _make_detokenizer(self, seq: Sequence) -> IncrementalDetokenizer:
        params = seq.sampling_params
        prompt_ids = seq.token_ids[: seq.num_prompt_tokens]
        context: list[int] = []
        mask = seq.is_token_ids
        for i in range(len(prompt_ids) - 1, max(len(prompt_ids) - _DETOKENIZER_CONTEXT, 0) - 1, -1):
            if mask is not None and not mask[i]:
                break  # placeholders of embed rows are not text
            context.insert(0, prompt_ids[i])
        return IncrementalDetokenizer(
            self.tokenizer,
            context,
            skip_special_tokens=params.skip_special_tokens,
            stop=list(params.stop or []),
            include_stop_str_in_output=params.include_stop_str_in_output,
            min_tokens=params.min_tokens,
        )

    # ---- scheduling -----------------------------------------------------------------------

    def schedule(self) -> list[tuple[Sequence, int]]:
        """Pick this step's work: ``(sequence, number of tokens to compute)`` pairs."""
        scheduled: dict[int, tuple[Sequence, int]] = {}
        budget = self.max_num_batched_tokens
        decodes = [s for s in self.running if s.num_tokens - s.num_computed_tokens == 1]
        prefills = [s for s in self.running if s.num_tokens - s.num_computed_tokens > 1]
        num_preempted = self.num_preemptions
        for seq in decodes + prefills:
            if budget == 0:
                break
            if seq.status != SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
            before = len(scheduled)
            if self._make_room(seq, num_new, scheduled):
                self.block_manager.append_slots(seq, num_new)
                scheduled[seq.seq_id] = (seq, num_new)
            if len(scheduled) <= before:  # victims already scheduled give their tokens back
                budget = self.max_num_batched_tokens - sum(n for _, n in scheduled.values())
            else:
                budget -= num_new
        if self.num_preemptions == num_preempted:
            budget = self._schedule_waiting(scheduled, budget)
        return list(scheduled.values())

    def _make_room(
        self, seq: Sequence, num_new: int, scheduled: dict[int, tuple[Sequence, int]]
    ) -> bool:
        """Preempt the latest arrivals until ``seq`` fits; False if ``seq`` itself had to go."""
        while not self.block_manager.can_append(seq, num_new):
            victim = self.running[-1]
            if victim is seq and len(self.running) == 1:
                holder = next((s for s in reversed(self.waiting) if s.block_table), None)
                if holder is not None:  # a waiting branch's shared blocks go first
                    self.block_manager.free(holder)
                    continue
                # Alone and still too large for the whole pool: it can never run.
                self.finish(seq, SequenceStatus.FINISHED_LENGTH)
                return False
            scheduled.pop(victim.seq_id, None)
            self._preempt(victim)
            if victim is seq:
                return False
        return True

    def _schedule_waiting(self, scheduled: dict[int, tuple[Sequence, int]], budget: int) -> int:
        bm = self.block_manager
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.block_table:  # a branch that already shares its prompt's blocks
                num_new = min(seq.num_tokens - seq.num_computed_tokens, budget)
                if not bm.can_append(seq, num_new):
                    break
                bm.append_slots(seq, num_new)
            else:
                cached = bm.get_computed_blocks(seq)
                num_new = min(seq.num_tokens - len(cached) * bm.block_size, budget)
                if not bm.can_allocate(seq, cached, num_new):
                    break
                bm.allocate(seq, cached, num_new)
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            bisect.insort(self.running, seq, key=lambda s: self._arrival[s.seq_id])
            scheduled[seq.seq_id] = (seq, num_new)
            budget -= num_new
        return budget

    def _preempt(self, seq: Sequence) -> None:
        _remove(self.running, seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    # ---- after the forward pass ------------------------------------------------------------

    def postprocess(
        self, scheduled: list[tuple[Sequence, int]], results: list[SampleResult | None]
    ) -> list[Sequence]:
        """Advance computed tokens, append sampled ones, check stops; returns finished seqs."""
        finished = []
        for (seq, num_new), result in zip(scheduled, results, strict=True):
            seq.num_computed_tokens += num_new
            self.block_manager.cache_full_blocks(seq)
            if result is None:
                continue
            self._start_branches(seq)
            seq.append_token(result.token_id)
            status = self._check_stop(seq, result.token_id)
            if status is not None:
                self.finish(seq, status)
                finished.append(seq)
        return finished

    def _start_branches(self, seq: Sequence) -> None:
        for branch in self._pending_branches.pop(seq.seq_id, []):
            self.block_manager.fork(seq, branch)
            self.waiting.appendleft(branch)

    def _check_stop(self, seq: Sequence, token_id: int) -> SequenceStatus | None:
        params = seq.sampling_params
        num_output = seq.num_tokens - seq.num_prompt_tokens
        status = None
        # An EOS that a complete grammar forced ends the sequence, min_tokens and ignore_eos
        # notwithstanding: the constraint allows nothing after it.
        is_eos = token_id in self.eos_token_ids
        grammar_done = is_eos and seq.grammar is not None and seq.grammar.is_stopped
        if num_output >= params.min_tokens or grammar_done:
            if is_eos and (not params.ignore_eos or grammar_done):
                status = SequenceStatus.FINISHED_STOPPED
            elif token_id in (params.stop_token_ids or ()):
                status = SequenceStatus.FINISHED_STOPPED
                self.stop_reasons[seq.seq_id] = token_id
        stop_str = self.detokenizers[seq.seq_id].update(token_id, is_stop_token=status is not None)
        if stop_str is not None:
            self.stop_reasons[seq.seq_id] = stop_str
            return SequenceStatus.FINISHED_STOPPED
        if status is not None:
            return status
        max_tokens = params.max_tokens
        if max_tokens is None:
            max_tokens = self.max_model_len - seq.num_prompt_tokens
        if num_output >= max_tokens or seq.num_tokens >= self.max_model_len:
            return SequenceStatus.FINISHED_LENGTH
        return None

    # ---- finishing -------------------------------------------------------------------------

    def finish(self, seq: Sequence, status: SequenceStatus) -> None:
        """Stop ``seq`` wherever it is (waiting, running or a pending branch); free its blocks."""
        for queue in (self.running, self.waiting, *self._pending_branches.values()):
            _remove(queue, seq)
        # Branches of a first branch that ends before sampling prefill on their own.
        self.waiting.extendleft(reversed(self._pending_branches.pop(seq.seq_id, [])))
        self.block_manager.free(seq)
        seq.status = status
        self._finished.append(seq)

    def pop_finished(self, seqs: list[Sequence] | None = None) -> list[Sequence]:
        """Sequences finished since the last call (by stops, capacity or aborts), or only
        those of ``seqs``."""
        if seqs is None:
            finished, self._finished = self._finished, []
            return finished
        ids = {s.seq_id for s in seqs}
        finished = [s for s in self._finished if s.seq_id in ids]
        self._finished = [s for s in self._finished if s.seq_id not in ids]
        return finished

    def forget(self, seq: Sequence) -> None:
        """Drop the bookkeeping of a finished sequence once its final output was made."""
        self.detokenizers.pop(seq.seq_id, None)
        self.stop_reasons.pop(seq.seq_id, None)
        self._arrival.pop(seq.seq_id, None)
        self.block_manager.forget(seq)

    def finish_reason(self, seq: Sequence) -> str | None:
        return FINISH_REASONS.get(seq.status)


def _remove(queue: MutableSequence[Sequence], seq: Sequence) -> None:
    """Remove ``seq`` by identity (sequences are not compared by value)."""
    for i, s in enumerate(queue):
        if s is seq:
            del queue[i]
            return
