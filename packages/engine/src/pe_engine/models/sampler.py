"""Batched sampling: penalties, min_tokens, greedy / temperature / min-p / top-k / top-p,
per-sequence seeds, and logprobs of the raw distribution.

Order (as vLLM): a constrained row's grammar mask first (so its logprobs, like vLLM's, are
those of the masked distribution); then raw logprobs are taken; then repetition, frequency and presence
penalties; min_tokens masking; then, for random rows, temperature, min-p, top-k, top-p and an
exponential race (``argmax(p / q)``, ``q ~ Exp(1)``). The noise is drawn on the sampler's device
(no per-step host-to-device copy of a [rows, vocab] tensor); a seeded sequence draws its row from
its own generator on that device, so its tokens do not depend on the rest of the batch.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Any

import torch

from pe_engine.core.sequence import Sequence
from pe_engine.sampling_params import SamplingParams
from pe_engine.structured.bitmask import GrammarMasker


@dataclass
class SampleResult:
    """The token sampled for one sequence and its log-probabilities (raw distribution)."""

    token_id: int
    logprob: float | None  # None when the request neither reports nor ranks by logprobs
    top_logprobs: list[tuple[int, float]] | None = None  # best first, when logprobs requested
    rank: int | None = None  # rank of token_id (1 = most likely), when logprobs requested


class Sampler:
    def __init__(self, eos_token_ids: Iterable[int], *, seed: int, device: torch.device) -> None:
        self.eos_token_ids = frozenset(eos_token_ids)
        self._banned_eos_ids = sorted(self.eos_token_ids)
        self.device = device
        # Noise of unseeded rows: one engine-wide stream on the device (seeded from the config).
        self.generator = torch.Generator(device).manual_seed(seed)
        self._masker: GrammarMasker | None = None

    def __call__(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> list[SampleResult]:
        """``logits [len(seqs), vocab]`` float32 -> one result per sequence."""
        logits = self.apply_grammars(logits, seqs)
        token_ids = self._sample(self.process_logits(logits, seqs), seqs)
        return self._results(logits, token_ids, seqs)

    def apply_grammars(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> torch.Tensor:
        """``logits`` with each constrained row masked to what its grammar allows next."""
        rows = [i for i, s in enumerate(seqs) if s.grammar is not None]
        if not rows:
            return logits
        if self._masker is None:
            self._masker = GrammarMasker(logits.shape[1], self._banned_eos_ids)
        return self._masker.apply(logits, rows, [seqs[i].grammar for i in rows])  # type: ignore[misc]

    def process_logits(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> torch.Tensor:
        """``logits`` with penalties and min_tokens masking applied (a copy when any apply)."""
        if any(_needs_processing(s) for s in seqs):
            logits = logits.clone()
            self._apply_penalties(logits, seqs)
            self._apply_min_tokens(logits, seqs)
        return logits

    def _to_device(self, data: list[Any], dtype: torch.dtype) -> torch.Tensor:
        return torch.tensor(data, dtype=dtype).to(self.device, non_blocking=True)

    def _apply_penalties(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> None:
        rows = [i for i, s in enumerate(seqs) if s.sampling_params.has_penalties]
        if not rows:
            return
        params = [seqs[i].sampling_params for i in rows]
        sub = logits[rows]
        # Repetition: prompt ids at token positions + output ids (placeholders never count).
        seen_rows, seen_ids = _flatten([seqs[i].penalty_token_ids for i in rows])
        seen = torch.zeros_like(sub, dtype=torch.bool)
        seen[self._to_device(seen_rows, torch.long), self._to_device(seen_ids, torch.long)] = True
        rep = self._to_device([p.repetition_penalty for p in params], sub.dtype)[:, None]
        sub = torch.where(seen, torch.where(sub > 0, sub / rep, sub * rep), sub)
        # Frequency and presence: output ids only.
        out_rows, out_ids = _flatten([seqs[i].output_token_ids for i in rows])
        counts = torch.zeros_like(sub)
        index = (self._to_device(out_rows, torch.long), self._to_device(out_ids, torch.long))
        counts.index_put_(index, torch.ones(len(out_ids), device=sub.device), accumulate=True)
        freq = self._to_device([p.frequency_penalty for p in params], sub.dtype)[:, None]
        presence = self._to_device([p.presence_penalty for p in params], sub.dtype)[:, None]
        sub -= freq * counts + presence * (counts > 0)
        logits[rows] = sub

    def _apply_min_tokens(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> None:
        """Until min_tokens are generated, EOS (unless ignore_eos) and stop_token_ids can't win;
        a grammar that is complete wins over min_tokens (it allows nothing but EOS)."""
        for i, seq in enumerate(seqs):
            params = seq.sampling_params
            if seq.num_output_tokens >= params.min_tokens:
                continue
            if seq.grammar is not None and seq.grammar.is_stopped:
                continue
            banned = list(params.stop_token_ids)
            if not params.ignore_eos:
                banned += self._banned_eos_ids
            banned = [t for t in banned if t < logits.shape[1]]
            if banned:
                logits[i, banned] = float("-inf")

    def _sample(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> torch.Tensor:
        token_ids = logits.argmax(dim=-1)
        rows = [i for i, s in enumerate(seqs) if not s.sampling_params.is_greedy]
        if rows:
            random_seqs = [seqs[i] for i in rows]
            probs = self._probs(logits[rows], random_seqs)
            noise = self._noise(random_seqs, probs.shape[1])
            token_ids[rows] = (probs / noise).argmax(dim=-1)
        return token_ids

    def _probs(self, logits: torch.Tensor, seqs: Seq[Sequence]) -> torch.Tensor:
        params = [s.sampling_params for s in seqs]
        logits = logits / self._to_device([p.temperature for p in params], logits.dtype)[:, None]
        if any(p.min_p > 0 for p in params):
            probs = logits.softmax(dim=-1)
            min_p = self._to_device([p.min_p for p in params], logits.dtype)[:, None]
            threshold = probs.amax(dim=-1, keepdim=True) * min_p
            logits = logits.masked_fill(probs < threshold, float("-inf"))
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            logits = self._top_k_top_p(logits, params)
        return logits.softmax(dim=-1)

    def _top_k_top_p(self, logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
        vocab_size = logits.shape[1]
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        top_k = [p.top_k if 0 < p.top_k < vocab_size else vocab_size for p in params]
        kth_index = self._to_device([vocab_size - k for k in top_k], torch.long)[:, None]
        kth = sorted_logits.gather(1, kth_index)
        sorted_logits = sorted_logits.masked_fill(sorted_logits < kth, float("-inf"))
        top_p = self._to_device([p.top_p for p in params], logits.dtype)[:, None]
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1 - top_p
        drop[:, -1] = False  # always keep the most likely token
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return sorted_logits.scatter(1, order, sorted_logits)

    def _noise(self, seqs: Seq[Sequence], vocab_size: int) -> torch.Tensor:
        """Exp(1) noise ``[len(seqs), vocab_size]`` on the device: unseeded rows from the engine
        stream in one draw, each seeded row from its own generator."""
        noise = torch.empty(len(seqs), vocab_size, device=self.device)
        unseeded = [i for i, s in enumerate(seqs) if s.seed is None]
        if len(unseeded) == len(seqs):
            return noise.exponential_(generator=self.generator)
        if unseeded:
            noise[unseeded] = torch.empty(
                len(unseeded), vocab_size, device=self.device
            ).exponential_(generator=self.generator)
        for i, seq in enumerate(seqs):
            if seq.seed is not None:
                noise[i].exponential_(generator=seq.generator(self.device))
        return noise

    def _results(
        self, logits: torch.Tensor, token_ids: torch.Tensor, seqs: Seq[Sequence]
    ) -> list[SampleResult]:
        """Log-probabilities from the raw logits (no penalties, no temperature), as vLLM; only
        for rows that report or rank by them (a plain greedy batch costs one argmax)."""
        results = [SampleResult(t, None) for t in token_ids.tolist()]
        rows = [i for i, s in enumerate(seqs) if _needs_logprob(s.sampling_params)]
        if not rows:
            return results
        sub = logits[rows]
        sub = sub - sub.logsumexp(dim=-1, keepdim=True)
        token_logprobs = sub.gather(1, token_ids[rows][:, None])
        for i, logprob in zip(rows, token_logprobs[:, 0].tolist(), strict=True):
            results[i].logprob = logprob
        top_rows = [j for j, i in enumerate(rows) if seqs[i].sampling_params.logprobs is not None]
        if not top_rows:
            return results
        sub, token_logprobs = sub[top_rows], token_logprobs[top_rows]
        ranks = ((sub > token_logprobs).sum(dim=-1) + 1).tolist()
        num_top = max(seqs[rows[j]].sampling_params.logprobs or 0 for j in top_rows)
        top = sub.topk(min(num_top, sub.shape[1]), dim=-1)
        top_values, top_ids = top.values.tolist(), top.indices.tolist()
        for k, j in enumerate(top_rows):
            i = rows[j]
            n = seqs[i].sampling_params.logprobs or 0
            results[i].rank = ranks[k]
            results[i].top_logprobs = list(zip(top_ids[k][:n], top_values[k][:n], strict=True))
        return results


def prompt_logprobs(
    logits: torch.Tensor, target_ids: list[int], num_top: int
) -> list[SampleResult]:
    """Raw log-probability, rank and top ``num_top`` of each row's ``target_ids`` entry (the
    prompt token that row's position predicts)."""
    logprobs = logits.log_softmax(dim=-1)
    targets = torch.tensor(target_ids, device=logits.device)[:, None]
    target_logprobs = logprobs.gather(1, targets)
    ranks = ((logprobs > target_logprobs).sum(dim=-1) + 1).tolist()
    top = logprobs.topk(min(num_top, logprobs.shape[1]), dim=-1)
    top_values, top_ids = top.values.tolist(), top.indices.tolist()
    return [
        SampleResult(t, lp, list(zip(ids, values, strict=True)), rank)
        for t, lp, ids, values, rank in zip(
            target_ids, target_logprobs[:, 0].tolist(), top_ids, top_values, ranks, strict=True
        )
    ]


def _needs_logprob(params: SamplingParams) -> bool:
    return params.logprobs is not None or params.num_candidates > params.n


def _needs_processing(seq: Sequence) -> bool:
    params = seq.sampling_params
    return params.has_penalties or seq.num_output_tokens < params.min_tokens


def _flatten(lists: list[list[int]]) -> tuple[list[int], list[int]]:
    """(row index of each entry, entry) for a ragged list of id lists."""
    rows = [row for row, ids in enumerate(lists) for _ in ids]
    return rows, [t for ids in lists for t in ids]
