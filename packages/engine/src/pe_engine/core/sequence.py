"""Sequence: one generation branch of a request, with its KV bookkeeping."""

from __future__ import annotations

import enum
import itertools
from typing import TYPE_CHECKING

import torch

from pe_engine.core.row_keys import ROW_KEY_BYTES, row_keys

if TYPE_CHECKING:
    from pe_engine.prompt import Prompt
    from pe_engine.sampling_params import SamplingParams
    from pe_engine.structured.grammar import GrammarMatcher

_seq_ids = itertools.count()
_BRANCH_SEED_MIX = 0x9E3779B97F4A7C15


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED_STOPPED = enum.auto()
    FINISHED_LENGTH = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED


_FINISHED = {
    SequenceStatus.FINISHED_STOPPED,
    SequenceStatus.FINISHED_LENGTH,
    SequenceStatus.FINISHED_ABORTED,
}


class Sequence:
    """Prompt ids (placeholders at embed positions) + generated ids, block table, progress."""

    def __init__(
        self,
        request_id: str,
        token_ids: list[int],
        sampling_params: SamplingParams,
        *,
        prompt_embeds: torch.Tensor | None = None,
        is_token_ids: list[bool] | None = None,
        seed: int | None = None,
        cache_salt: str | None = None,
        embeds_row_keys: bytes | None = None,
    ) -> None:
        self.seq_id = next(_seq_ids)
        self.request_id = request_id
        self.sampling_params = sampling_params
        self.status = SequenceStatus.WAITING
        self.token_ids = list(token_ids)
        self.num_prompt_tokens = len(self.token_ids)
        self.prompt_embeds = prompt_embeds
        self.is_token_ids = is_token_ids if prompt_embeds is not None else None
        self.block_table: list[int] = []
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.seed = seed  # this branch's own noise stream; None: the engine-wide stream
        self._generator: torch.Generator | None = None
        self.cache_salt = cache_salt  # every branch and every recompute keeps the prompt's salt
        self.embeds_row_keys = embeds_row_keys  # the prefix cache's row keys, when known
        # This branch's constraint: advanced on each appended token, kept across preemption
        # (a recompute re-reads the tokens, it does not re-sample them).
        self.grammar: GrammarMatcher | None = None
        # _num_embeds_before[p]: embed rows before position p, so a chunk's rows are one slice.
        self._num_embeds_before = _prefix_counts(self.is_token_ids)
        self._prompt_real_ids = _real_ids(self.token_ids, self.is_token_ids)

    @classmethod
    def from_prompt(
        cls, request_id: str, prompt: Prompt, sampling_params: SamplingParams, *, branch: int = 0
    ) -> Sequence:
        """Branch ``branch`` of a request; a seeded request gets its own seed per branch."""
        seed = None
        if sampling_params.seed is not None:
            seed = branch_seed(sampling_params.seed, branch)
        return cls(
            request_id,
            prompt.token_ids,
            sampling_params,
            prompt_embeds=prompt.prompt_embeds,
            is_token_ids=prompt.is_token_ids,
            seed=seed,
            cache_salt=prompt.cache_salt,
            embeds_row_keys=prompt.embeds_row_keys,
        )

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def penalty_token_ids(self) -> list[int]:
        """Real token ids for penalties: prompt ids at token positions + generated ids."""
        return self._prompt_real_ids + self.output_token_ids

    def generator(self, device: torch.device) -> torch.Generator | None:
        """This branch's noise generator on ``device`` (the sampler's, so the noise never
        crosses devices), made at the first draw; None when unseeded."""
        if self.seed is None:
            return None
        if self._generator is None:
            self._generator = torch.Generator(device).manual_seed(self.seed)
        return self._generator

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        if self.grammar is not None:
            self.grammar.accept(token_id)

    def embeds_in_range(self, start: int, end: int) -> tuple[list[int], torch.Tensor | None]:
        """Embed positions in [start, end) as offsets from ``start``, and their rows."""
        end = min(end, self.num_prompt_tokens)
        if self.prompt_embeds is None or start >= end:
            return [], None
        first, last = self._num_embeds_before[start], self._num_embeds_before[end]
        if first == last:
            return [], None
        assert self.is_token_ids is not None
        mask = self.is_token_ids
        offsets = [p - start for p in range(start, end) if not mask[p]]
        return offsets, self.prompt_embeds[first:last]

    def embeds_keys_in_range(self, start: int, end: int) -> tuple[list[int], bytes | None]:
        """Embed positions in [start, end) as offsets from ``start``, and their rows' prefix-
        cache keys (16 bytes each): the prompt's, or hashed from the rows now."""
        offsets, rows = self.embeds_in_range(start, end)
        if rows is None:
            return offsets, None
        if self.embeds_row_keys is None:
            return offsets, row_keys(rows)
        first = self._num_embeds_before[start] * ROW_KEY_BYTES
        return offsets, self.embeds_row_keys[first : first + len(offsets) * ROW_KEY_BYTES]

    def __repr__(self) -> str:
        return (
            f"Sequence(seq_id={self.seq_id}, request_id={self.request_id!r}, "
            f"num_tokens={self.num_tokens}, num_computed_tokens={self.num_computed_tokens}, "
            f"status={self.status.name})"
        )


def branch_seed(seed: int, branch: int) -> int:
    """The generator seed of branch ``branch``: the request seed itself for branch 0."""
    if branch == 0:
        return seed % 2**64
    return (seed * _BRANCH_SEED_MIX + branch) % 2**64


def _prefix_counts(is_token_ids: list[bool] | None) -> list[int]:
    if is_token_ids is None:
        return []
    counts = [0]
    for is_token in is_token_ids:
        counts.append(counts[-1] + (not is_token))
    return counts


def _real_ids(token_ids: list[int], is_token_ids: list[bool] | None) -> list[int]:
    if is_token_ids is None:
        return list(token_ids)
    return [t for t, is_token in zip(token_ids, is_token_ids, strict=True) if is_token]
