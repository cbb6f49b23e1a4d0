"""The per-step token mask of the constrained rows of a batch: filled by llguidance on its own
threads (one int32 bitmask, a bit per token), applied to the logits as -inf where not allowed.

A matcher that fails mid-generation (a grammar past llguidance's per-step limits, which bound
the time a step may spend on it) allows only end-of-sequence: its sequence ends there, and the
failure is logged with the compiler's message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pe_engine.structured.grammar import GrammarMatcher

log = logging.getLogger("pe_engine")


class GrammarMasker:
    """Fills and applies the token bitmask; owns the reused mask buffer and thread pool."""

    def __init__(
        self, vocab_size: int, eos_token_ids: Sequence[int] = (), *, num_threads: int = 2
    ) -> None:
        self.vocab_size = vocab_size
        self._eos_token_ids = [t for t in eos_token_ids if t < vocab_size]
        self._num_threads = num_threads
        self._executor: Any = None
        self._bitmask = np.zeros((0, (vocab_size + 31) // 32), dtype=np.int32)

    def apply(
        self, logits: torch.Tensor, rows: Sequence[int], matchers: Sequence[GrammarMatcher]
    ) -> torch.Tensor:
        """``logits`` with every token the row's grammar does not allow next set to -inf, in
        place (the step's own logits; ``rows[i]`` is the row of ``matchers[i]``)."""
        import llguidance.numpy

        if self._executor is None:
            import llguidance

            self._executor = llguidance.LLExecutor(self._num_threads)
        if self._bitmask.shape[0] < len(rows):
            self._bitmask = np.zeros((len(rows), self._bitmask.shape[1]), dtype=np.int32)
        bitmask = self._bitmask[: len(rows)]
        llguidance.numpy.fill_next_token_bitmask_par(
            self._executor, [(m.matcher, i) for i, m in enumerate(matchers)], bitmask
        )
        for i, matcher in enumerate(matchers):
            if matcher.matcher.is_error():
                self._allow_only_eos(bitmask[i], matcher)
        width = logits.shape[1]
        # bit 0 = not allowed: unpack the inverted words, one byte per token, on the host
        banned = np.unpackbits(~bitmask.view(np.uint8), axis=1, bitorder="little")[:, :width]
        banned_rows = torch.from_numpy(banned).to(logits.device, non_blocking=True).bool()
        if len(rows) != logits.shape[0]:  # some rows are free: ban nothing there
            full = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
            full[torch.tensor(list(rows), device=logits.device)] = banned_rows
            banned_rows = full
        return logits.masked_fill_(banned_rows, float("-inf"))

    def _allow_only_eos(self, row: np.ndarray, matcher: GrammarMatcher) -> None:
        if not matcher.error_logged:
            matcher.error_logged = True
            log.warning("a constraint failed mid-generation: %s", matcher.matcher.get_error()[:500])
        row[:] = 0
        words = row.view(np.uint32)
        for token_id in self._eos_token_ids:
            words[token_id // 32] |= np.uint32(1 << (token_id % 32))
