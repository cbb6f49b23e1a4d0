"""The per-step token mask of the constrained rows of a batch: filled by llguidance on its own
threads (one int32 bitmask, a bit per token), applied to the logits as -inf where not allowed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from pe_engine.structured.grammar import GrammarMatcher


class GrammarMasker:
    """Fills and applies the token bitmask; owns the reused mask buffer and thread pool."""

    def __init__(self, vocab_size: int, *, num_threads: int = 2) -> None:
        self.vocab_size = vocab_size
        self._num_threads = num_threads
        self._executor: Any = None
        self._bitmask = np.zeros((0, (vocab_size + 31) // 32), dtype=np.int32)

    def apply(
        self, logits: torch.Tensor, rows: Sequence[int], matchers: Sequence[GrammarMatcher]
    ) -> torch.Tensor:
        """``logits`` with every token the row's grammar does not allow next set to -inf
        (a copy; ``rows[i]`` is the row of ``matchers[i]``)."""
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
        width = logits.shape[1]
        allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, :width]
        allowed_rows = torch.from_numpy(allowed).to(logits.device, non_blocking=True).bool()
        logits = logits.clone()
        index = torch.tensor(list(rows), device=logits.device)
        logits[index] = logits[index].masked_fill(~allowed_rows, float("-inf"))
        return logits
